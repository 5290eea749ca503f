"""Matryoshka Representation Learning: the contrastive loss summed over nested embedding prefixes.

With prefixes (k_1 < ... < k_n = D) and weights w_i, the loss is sum_i w_i L(p_k(img), p_k(txt)),
where p_k keeps the first k dimensions of each row and re-normalises them to unit length, and L is
whichever sharded loss `config.loss` names (local_rows, tiled, ring), so every implementation and
gradient caching (which differentiates this same function of the embeddings) get it unchanged.

The towers return unit embeddings. Normalising multiplies a row by one positive number, so the
re-normalised prefix of a unit row is the normalised prefix of the raw projection (up to the towers'
eps of 1e-6 on the squared norm): no separate raw output is needed, in training or in evaluation.
The full width is always trained (appended with weight 1 when `matryoshka_dims` leaves it out),
and its prefix is the embedding itself, untouched: a single full-width prefix of weight 1 is the
plain loss bit for bit.
"""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from pretrain.losses.softmax import LossFn

Array = jax.Array


def prefix_widths(dims: Sequence[int], width: int) -> tuple[int, ...]:
  """The widths trained: `dims` (ascending, each <= width), the full width appended if absent."""
  dims = tuple(int(d) for d in dims)
  return dims if dims and dims[-1] == width else dims + (width,)


def prefix_weights(dims: Sequence[int], weights: Sequence[float], width: int) -> tuple[float, ...]:
  """One weight per `prefix_widths` entry: `weights` (default all 1); 1 for an appended full
  width."""
  listed = tuple(float(w) for w in weights) or (1.0,) * len(dims)
  return listed + (1.0,) * (len(prefix_widths(dims, width)) - len(listed))


def prefix(x: Array, k: int) -> Array:
  """The first k dimensions of unit rows, re-normalised; the full width is `x` itself."""
  if k == x.shape[-1]:
    return x
  x = x[..., :k].astype(jnp.float32)
  # A tiny eps: the rows are prefixes of unit vectors, so only an all-zero prefix comes near it.
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)


def _pick(values: Array, i: int) -> Array:
  """Entry i of a per-prefix vector; a scalar (shared by every prefix) as it is."""
  return values if values.ndim == 0 else values[i]


def make_matryoshka_loss(base: LossFn, widths: Sequence[int], weights: Sequence[float]) -> Callable:
  """(img, txt, scale[, bias]) -> (weighted sum of `base` over the prefixes, metrics).

  scale and bias are scalars shared by every prefix or vectors with one entry per width. Metrics:
  `base`'s for the full width under their plain names, `loss@k` for every width, and the other
  widths' metrics as `<name>@k`.
  """
  widths, weights = tuple(widths), tuple(weights)
  full = widths[-1]

  def loss_fn(img: Array, txt: Array, scale: Array, *bias: Array) -> tuple[Array, dict]:
    total, metrics = None, {}
    for i, (k, weight) in enumerate(zip(widths, weights)):
      loss, parts = base(prefix(img, k), prefix(txt, k), _pick(scale, i),
                         *(_pick(b, i) for b in bias))
      term = loss if weight == 1.0 else weight * loss
      total = term if total is None else total + term
      metrics[f'loss@{k}'] = loss
      metrics.update(parts if k == full else {f'{name}@{k}': v for name, v in parts.items()})
    return total, metrics

  return loss_fn

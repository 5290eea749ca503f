"""Softmax contrastive loss over tiles of the gathered embeddings (the Inf-CL idea).

Each device scores its b local rows against the B gathered columns one tile of T columns at a
time, keeping a running log-sum-exp. The custom VJP saves only the per-row log-sum-exp and
recomputes each tile's probabilities in the backward pass, so memory is O(b x T) + O(B x d),
never b x B. The all-gather stays outside the custom VJP: its transpose (a reduce-scatter) still
returns exact gradients to every device.
"""

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from pretrain.losses import LossFn


def _tiles(keys: jax.Array, tile: int) -> tuple[jax.Array, jax.Array]:
  """[B, d] -> ([B/T, T, d] zero-padded, [B/T, T] validity)."""
  total = keys.shape[0]
  count = -(-total // tile)
  padded = jnp.pad(keys, ((0, count * tile - total), (0, 0)))
  valid = jnp.arange(count * tile) < total
  return padded.reshape(count, tile, -1), valid.reshape(count, tile)


def _forward_stats(q, k, scale, tile):
  """Per row: log-sum-exp over all columns, and the argmax column (for accuracy)."""
  tiles, valid = _tiles(k, tile)

  def body(carry, inputs):
    lse, best, arg = carry
    index, k_tile, ok = inputs
    z = jnp.where(ok[None, :], scale * (q @ k_tile.T), -jnp.inf)
    lse = jnp.logaddexp(lse, jax.nn.logsumexp(z, axis=1))
    tile_best = jnp.max(z, axis=1)
    tile_arg = index * tile + jnp.argmax(z, axis=1)
    better = tile_best > best
    return (lse, jnp.where(better, tile_best, best), jnp.where(better, tile_arg, arg)), None

  # Derived from q so that, inside shard_map, the carries vary over the same axes as the data.
  minus_inf = q[:, 0] * 0 - jnp.inf
  init = (minus_inf, minus_inf, (q[:, 0] * 0).astype(jnp.int32))
  (lse, _, arg), _ = lax.scan(body, init, (jnp.arange(tiles.shape[0]), tiles, valid))
  return lse, arg


@partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def tiled_row_ce(q, k, labels, scale, smoothing, tile):
  """(sum_i CE(row i of scale * q @ k.T, labels[i]) with label smoothing, argmax column per row),
  computed tile by tile."""
  return _tiled_row_ce_fwd(q, k, labels, scale, smoothing, tile)[0]


def _tiled_row_ce_fwd(q, k, labels, scale, smoothing, tile):
  lse, arg = _forward_stats(q, k, scale, tile)
  target = scale * jnp.sum(q * k[labels], axis=1)
  mean = scale * (q @ jnp.mean(k, axis=0))
  loss = jnp.sum(lse - (1 - smoothing) * target - smoothing * mean)
  return (loss, arg), (q, k, labels, scale, lse)


def _tiled_row_ce_bwd(smoothing, tile, residuals, cotangents):
  g, _ = cotangents  # the argmax output has no gradient
  q, k, labels, scale, lse = residuals
  tiles, valid = _tiles(k, tile)
  k_mean = jnp.mean(k, axis=0)

  def body(carry, inputs):
    dq, dscale = carry
    k_tile, ok = inputs
    dots = q @ k_tile.T
    p = jnp.where(ok[None, :], jnp.exp(scale * dots - lse[:, None]), 0.0)  # softmax tile
    dq = dq + p @ k_tile
    dscale = dscale + jnp.sum(p * dots)
    dk_tile = p.T @ q
    return (dq, dscale), dk_tile

  (pk, p_dots), dk_tiles = lax.scan(body, (q * 0, jnp.sum(q * 0)), (tiles, valid))
  dk_soft = dk_tiles.reshape(-1, k.shape[1])[:k.shape[0]]
  k_label = k[labels]
  dq = g * scale * (pk - (1 - smoothing) * k_label - smoothing * k_mean)
  dk = g * scale * (dk_soft - (1 - smoothing) * jnp.zeros_like(k).at[labels].add(q)
                    - smoothing * jnp.sum(q, axis=0)[None, :] / k.shape[0])
  target_dots = jnp.sum(q * k_label, axis=1)
  mean_dots = q @ k_mean
  dscale = g * (p_dots - (1 - smoothing) * jnp.sum(target_dots) - smoothing * jnp.sum(mean_dots))
  return dq, dk, None, dscale


tiled_row_ce.defvjp(_tiled_row_ce_fwd, _tiled_row_ce_bwd)


def make_tiled_softmax_loss(mesh: Mesh, batch_axes, label_smoothing: float = 0.0,
                            tile: int = 1024) -> LossFn:
  """Same loss and metrics as `make_softmax_loss`, with O(b x tile) logits memory."""
  axes = tuple(batch_axes)

  def per_device(img, txt, scale):
    img, txt = img.astype(jnp.float32), txt.astype(jnp.float32)
    all_img = lax.all_gather(img, axes, axis=0, tiled=True)
    all_txt = lax.all_gather(txt, axes, axis=0, tiled=True)
    local, total = img.shape[0], all_img.shape[0]
    labels = lax.axis_index(axes) * local + jnp.arange(local)
    # Per-device use of the shared scale: the transpose of this pcast is the psum of its gradient.
    scale = lax.pcast(scale, axes, to='varying')
    ce_i2t, arg_i2t = tiled_row_ce(img, all_txt, labels, scale, label_smoothing, tile)
    ce_t2i, arg_t2i = tiled_row_ce(txt, all_img, labels, scale, label_smoothing, tile)
    loss = lax.psum(ce_i2t + ce_t2i, axes) / (2 * total)
    metrics = {'acc_i2t': lax.psum(jnp.sum(arg_i2t == labels), axes) / total,
               'acc_t2i': lax.psum(jnp.sum(arg_t2i == labels), axes) / total}
    return loss, metrics

  return jax.shard_map(per_device, mesh=mesh, in_specs=(P(axes), P(axes), P()),
                       out_specs=(P(), P()), check_vma=True)

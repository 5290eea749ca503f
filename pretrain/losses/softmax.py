"""Symmetric softmax contrastive loss with the whole global batch as negatives.

`softmax_reference` is the formula on one device (B x B logits). `make_softmax_loss` is what training
runs: inside `jax.shard_map` each device all-gathers the embeddings over the batch axes and computes
only its own rows (b x B logits). The transpose of `all_gather` is a reduce-scatter, so gradients of
the local rows are the exact global gradients with no extra code.
"""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

Array = jax.Array
LossFn = Callable[[Array, Array, Array], tuple[Array, dict[str, Array]]]


def _row_cross_entropy(logits: Array, labels: Array, label_smoothing: float) -> Array:
  """Per-row CE against one-hot targets smoothed towards uniform over the row."""
  lse = jax.nn.logsumexp(logits, axis=-1)
  target = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
  smoothed = (1.0 - label_smoothing) * target + label_smoothing * jnp.mean(logits, axis=-1)
  return lse - smoothed


def softmax_reference(img: Array, txt: Array, logit_scale: Array,
                      label_smoothing: float = 0.0) -> tuple[Array, dict[str, Array]]:
  """The loss written from the formula over the full B x B logits, for tests and one device."""
  logits = logit_scale * jnp.dot(img.astype(jnp.float32), txt.astype(jnp.float32).T)
  labels = jnp.arange(img.shape[0])
  i2t = _row_cross_entropy(logits, labels, label_smoothing)
  t2i = _row_cross_entropy(logits.T, labels, label_smoothing)
  metrics = {
      'acc_i2t': jnp.mean(jnp.argmax(logits, axis=1) == labels),
      'acc_t2i': jnp.mean(jnp.argmax(logits, axis=0) == labels),
  }
  return 0.5 * (jnp.mean(i2t) + jnp.mean(t2i)), metrics


def _local_rows_loss(img: Array, txt: Array, logit_scale: Array, *, axes: tuple[str, ...],
                     label_smoothing: float) -> tuple[Array, dict[str, Array]]:
  """Runs per device: b local rows against the B gathered columns, in both directions."""
  img = img.astype(jnp.float32)
  txt = txt.astype(jnp.float32)
  all_img = lax.all_gather(img, axes, axis=0, tiled=True)
  all_txt = lax.all_gather(txt, axes, axis=0, tiled=True)
  local, total = img.shape[0], all_img.shape[0]
  labels = lax.axis_index(axes) * local + jnp.arange(local)
  logits_i2t = logit_scale * jnp.dot(img, all_txt.T)  # [b, B]
  logits_t2i = logit_scale * jnp.dot(txt, all_img.T)  # [b, B]
  ce_sum = (jnp.sum(_row_cross_entropy(logits_i2t, labels, label_smoothing))
            + jnp.sum(_row_cross_entropy(logits_t2i, labels, label_smoothing)))
  hits_i2t = jnp.sum(jnp.argmax(logits_i2t, axis=1) == labels)
  hits_t2i = jnp.sum(jnp.argmax(logits_t2i, axis=1) == labels)
  loss = lax.psum(ce_sum, axes) / (2 * total)
  metrics = {'acc_i2t': lax.psum(hits_i2t, axes) / total,
             'acc_t2i': lax.psum(hits_t2i, axes) / total}
  return loss, metrics


def make_softmax_loss(mesh: Mesh, batch_axes: Sequence[str], label_smoothing: float = 0.0) -> LossFn:
  """The sharded loss: embeddings [B, D] sharded over `batch_axes`, scale replicated."""
  axes = tuple(batch_axes)

  def per_device(img, txt, logit_scale):
    return _local_rows_loss(img, txt, logit_scale, axes=axes, label_smoothing=label_smoothing)

  return jax.shard_map(per_device, mesh=mesh, in_specs=(P(axes), P(axes), P()),
                       out_specs=(P(), P()), check_vma=True)


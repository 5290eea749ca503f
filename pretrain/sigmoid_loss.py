"""SigLIP's sigmoid loss over all pairs of the global batch, with a ppermute ring.

Each device scores its b images against its own b texts (positives on the diagonal), then passes
its text block to the next device P-1 times with `ppermute`, scoring negatives only; nothing is
all-gathered, so memory is O(b x b). Each hop is rematerialised (`jax.checkpoint`) so the backward
pass does not keep every block. A text block carries its positive score and its best score so
far, so text->image accuracy is counted on the device where the block's tour ends.
"""

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from pretrain.losses import LossFn


def sigmoid_reference(img, txt, scale, bias) -> tuple[jax.Array, dict]:
  """Dense single-device SigLIP loss: -1/B sum_ij log sigmoid(y_ij (scale x_i.y_j + bias))."""
  img, txt = img.astype(jnp.float32), txt.astype(jnp.float32)
  z = scale * img @ txt.T + bias
  signs = 2 * jnp.eye(img.shape[0]) - 1
  labels = jnp.arange(img.shape[0])
  metrics = {'acc_i2t': jnp.mean(jnp.argmax(z, axis=1) == labels),
             'acc_t2i': jnp.mean(jnp.argmax(z, axis=0) == labels)}
  return -jnp.sum(jax.nn.log_sigmoid(signs * z)) / img.shape[0], metrics


def _negatives(img, txt, scale, bias):
  z = scale * img @ txt.T + bias
  return -jnp.sum(jax.nn.log_sigmoid(-z)), jnp.max(z, axis=1), jnp.max(z, axis=0)


def make_sigmoid_ring_loss(mesh: Mesh, batch_axes) -> LossFn:
  """Sharded SigLIP loss: embeddings [B, D] over `batch_axes`; scale and bias replicated."""
  axes = tuple(batch_axes)
  size = 1
  for axis in axes:
    size *= mesh.shape[axis]
  ring = [(i, (i + 1) % size) for i in range(size)]
  negatives = jax.checkpoint(_negatives)

  def per_device(img, txt, scale, bias):
    img, txt = img.astype(jnp.float32), txt.astype(jnp.float32)
    z = scale * img @ txt.T + bias
    local = img.shape[0]
    eye = jnp.eye(local, dtype=bool)
    own = -jnp.sum(jax.nn.log_sigmoid(jnp.where(eye, z, -z)))
    positive = jnp.diagonal(z)
    row_best = jnp.max(jnp.where(eye, -jnp.inf, z), axis=1)  # best negative per image so far
    col_best = jnp.max(jnp.where(eye, -jnp.inf, z), axis=0)  # ... per text, travels with it

    def hop(carry, _):
      txt_block, txt_positive, txt_best, loss, row_best = carry
      txt_block, txt_positive, txt_best = (
          lax.ppermute(x, axes, ring) for x in (txt_block, txt_positive, txt_best))
      block_loss, block_rows, block_cols = negatives(img, txt_block, scale, bias)
      return (txt_block, txt_positive, jnp.maximum(txt_best, block_cols), loss + block_loss,
              jnp.maximum(row_best, block_rows)), None

    carry = (txt, positive, col_best, own, row_best)
    if size > 1:
      carry, _ = lax.scan(hop, carry, None, length=size - 1)
    _, txt_positive, txt_best, loss, row_best = carry
    total = local * size
    metrics = {'acc_i2t': lax.psum(jnp.sum(positive > row_best), axes) / total,
               'acc_t2i': lax.psum(jnp.sum(txt_positive > txt_best), axes) / total}
    return lax.psum(loss, axes) / total, metrics

  return jax.shard_map(per_device, mesh=mesh, in_specs=(P(axes), P(axes), P(), P()),
                       out_specs=(P(), P()), check_vma=True)

"""SigLIP's sigmoid loss over all pairs of the global batch, with a ppermute ring.

Each device scores its b images against its own b texts (positives on the diagonal), then the text
blocks travel round the ring (`ppermute`, see pretrain/losses/ring.py), scored one tile of T texts at a
time; nothing is all-gathered. The custom VJP keeps no scores: the backward pass runs the ring
again, recomputes each tile and sends each text block's gradient round with it, so memory is
O(b x d + b x T) per device whatever the global batch. Each text block carries its best negative
score, so text->image accuracy is known when the block is home.
"""

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from pretrain.losses.softmax import LossFn
from pretrain.losses.ring import ring_size, ring_visit, tile_rows, tile_starts, tile_valid, untile_rows


def sigmoid_reference(img, txt, scale, bias) -> tuple[jax.Array, dict]:
  """Dense single-device SigLIP loss: -1/B sum_ij log sigmoid(y_ij (scale x_i.y_j + bias))."""
  img, txt = img.astype(jnp.float32), txt.astype(jnp.float32)
  z = scale * img @ txt.T + bias
  signs = 2 * jnp.eye(img.shape[0]) - 1
  labels = jnp.arange(img.shape[0])
  metrics = {'acc_i2t': jnp.mean(jnp.argmax(z, axis=1) == labels),
             'acc_t2i': jnp.mean(jnp.argmax(z, axis=0) == labels)}
  return -jnp.sum(jax.nn.log_sigmoid(signs * z)) / img.shape[0], metrics


def _tile_scores(q, k_tile, ok, start, own, scale, bias):
  """Logits of one tile, its positives mask (own block's diagonal) and its raw dot products."""
  dots = q @ k_tile.T
  z = scale * dots + bias
  cols = start + jnp.arange(k_tile.shape[0])
  positive = own & (jnp.arange(q.shape[0])[:, None] == cols[None, :]) & ok[None, :]
  return z, positive, dots


@partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def ring_sigmoid(q, k, scale, bias, tile, axes, size):
  """(-sum log sigmoid(+-z) over this device's rows x all columns, best negative per row,
  best negative per column of this device's block), z = scale * q @ k^T + bias."""
  return _ring_sigmoid_fwd(q, k, scale, bias, tile, axes, size)[0]


def _ring_sigmoid_fwd(q, k, scale, bias, tile, axes, size):
  b = q.shape[0]
  me = lax.axis_index(axes)
  starts = tile_starts(b, tile)

  def visit(local, block, col_best, src):
    def body(rows, xs):
      loss, row_best = rows
      k_tile, ok, c_best, start = xs
      z, positive, _ = _tile_scores(q, k_tile, ok, start, src == me, scale, bias)
      terms = jnp.where(ok[None, :], jax.nn.log_sigmoid(jnp.where(positive, z, -z)), 0.0)
      negative = jnp.where(positive | ~ok[None, :], -jnp.inf, z)
      return ((loss - jnp.sum(terms), jnp.maximum(row_best, jnp.max(negative, axis=1))),
              jnp.maximum(c_best, jnp.max(negative, axis=0)))

    xs = (tile_rows(block, tile), tile_valid(b, tile), tile_rows(col_best, tile, -jnp.inf), starts)
    local, col_tiles = lax.scan(body, local, xs)
    return local, untile_rows(col_tiles, b)

  minus_inf = q[:, 0] * 0 - jnp.inf  # derived from q: varies over the axes like the data
  (loss, row_best), col_best = ring_visit(visit, (jnp.sum(q * 0), minus_inf), k, minus_inf,
                                          axes=axes, size=size)
  return (loss, row_best, col_best), (q, k, scale, bias)


def _ring_sigmoid_bwd(tile, axes, size, residuals, cotangents):
  q, k, scale, bias = residuals
  g = cotangents[0]  # the best-score outputs are metrics, without gradient
  b = q.shape[0]
  me = lax.axis_index(axes)
  starts = tile_starts(b, tile)

  def visit(local, block, dk, src):
    def body(acc, xs):
      dq, dscale, dbias = acc
      k_tile, ok, start = xs
      z, positive, dots = _tile_scores(q, k_tile, ok, start, src == me, scale, bias)
      # d/dz of -log sigmoid(y z) is sigmoid(z) - [y = +1].
      dz = g * jnp.where(ok[None, :], jax.nn.sigmoid(z) - positive, 0.0)
      return ((dq + scale * dz @ k_tile, dscale + jnp.sum(dz * dots), dbias + jnp.sum(dz)),
              scale * dz.T @ q)

    local, dk_tiles = lax.scan(body, local, (tile_rows(block, tile), tile_valid(b, tile), starts))
    return local, dk + untile_rows(dk_tiles, b)

  zero = jnp.sum(q * 0)
  (dq, dscale, dbias), dk = ring_visit(visit, (q * 0, zero, zero), k, k * 0, axes=axes, size=size)
  return dq, dk, dscale, dbias


ring_sigmoid.defvjp(_ring_sigmoid_fwd, _ring_sigmoid_bwd)


def make_sigmoid_ring_loss(mesh: Mesh, batch_axes, tile: int = 1024) -> LossFn:
  """Sharded SigLIP loss: embeddings [B, D] over `batch_axes`; scale and bias replicated."""
  axes = tuple(batch_axes)
  size = ring_size(mesh, axes)

  def per_device(img, txt, scale, bias):
    img, txt = img.astype(jnp.float32), txt.astype(jnp.float32)
    local = img.shape[0]
    total = local * size
    # Per-device uses of the shared scale and bias: the transposes of these pcasts psum gradients.
    varying = lambda x: lax.pcast(x, axes, to='varying')
    loss, row_best, col_best = ring_sigmoid(img, txt, varying(scale), varying(bias),
                                            min(tile, local), axes, size)
    positive = scale * jnp.sum(img * txt, axis=1) + bias
    metrics = {'acc_i2t': lax.psum(jnp.sum(positive > row_best), axes) / total,
               'acc_t2i': lax.psum(jnp.sum(positive > col_best), axes) / total}
    return lax.psum(loss, axes) / total, metrics

  return jax.shard_map(per_device, mesh=mesh, in_specs=(P(axes), P(axes), P(), P()),
                       out_specs=(P(), P()), check_vma=True)

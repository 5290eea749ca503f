"""Softmax contrastive loss over a ring of tiles (the Inf-CL idea), memory independent of B^2.

Each device holds b images and b texts. The text blocks travel round the ring (`ppermute`); at
each visit the device scores its b images against one tile of T texts at a time, S = s x img @ txt^T,
and updates a running log-sum-exp for its image rows (image->text) and, for the visiting texts, a
partial log-sum-exp over its image rows (text->image) that travels on with the block. One score
matrix serves both directions, so a step costs 4 matmuls of b x B x d (forward, recompute, two
gradients) against local_rows' 6.

The custom VJP saves only the row and column log-sum-exp vectors; the backward pass runs the ring
again, recomputes each tile and sends each text block's gradient round with it, so memory is
O(b x d + b x T) per device, never b x B, and no embedding is all-gathered.
"""

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from pretrain.losses.softmax import LossFn
from pretrain.losses.ring import ring_size, ring_visit, tile_rows, tile_starts, tile_valid, untile_rows


def _scores(q, k_tile, ok, scale):
  """(scale * q @ k_tile^T with padded columns at -inf, the raw dot products)."""
  dots = q @ k_tile.T
  return jnp.where(ok[None, :], scale * dots, -jnp.inf), dots


def _forward_visit(q, scale, tile, local_offset):
  """Visit of one text block: row stats (local) and the block's column stats (travel)."""
  b = q.shape[0]

  def visit(local, k, travel, src):
    def body(rows, xs):
      row_lse, row_best, row_arg = rows
      k_tile, ok, col_lse, col_best, col_arg, start = xs
      z, _ = _scores(q, k_tile, ok, scale)
      row_lse = jnp.logaddexp(row_lse, jax.nn.logsumexp(z, axis=1))
      tile_best, tile_arg = jnp.max(z, axis=1), src * b + start + jnp.argmax(z, axis=1)
      better = tile_best > row_best
      rows = (row_lse, jnp.where(better, tile_best, row_best), jnp.where(better, tile_arg, row_arg))
      col_lse = jnp.logaddexp(col_lse, jax.nn.logsumexp(z, axis=0))
      block_best, block_arg = jnp.max(z, axis=0), local_offset + jnp.argmax(z, axis=0)
      better = block_best > col_best
      cols = (col_lse, jnp.where(better, block_best, col_best), jnp.where(better, block_arg, col_arg))
      return rows, cols

    xs = (tile_rows(k, tile), tile_valid(b, tile),
          *(tile_rows(t, tile, -jnp.inf if t.dtype != jnp.int32 else 0) for t in travel),
          tile_starts(b, tile))
    local, cols = lax.scan(body, local, xs)
    return local, tuple(untile_rows(c, b) for c in cols)

  return visit


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def ring_lse(q, k, scale, tile, axes, size):
  """Row and column log-sum-exp of S = scale * Q @ K^T over the ring, and argmaxes.

  q: this device's rows [b, d]; k: this device's block of columns [b, d]. Returns
  (row_lse [b], col_lse [b] for this device's columns, row_arg [b], col_arg [b]) with global
  indices, exactly as if S were the full B x B matrix.
  """
  return _ring_lse_fwd(q, k, scale, tile, axes, size)[0]


def _ring_lse_fwd(q, k, scale, tile, axes, size):
  b = q.shape[0]
  me = lax.axis_index(axes)
  minus_inf = q[:, 0] * 0 - jnp.inf  # derived from q: varies over the axes like the data
  zero_index = (q[:, 0] * 0).astype(jnp.int32)
  local = (minus_inf, minus_inf, zero_index)
  travel = (minus_inf, minus_inf, zero_index)
  visit = _forward_visit(q, scale, tile, me * b)
  (row_lse, _, row_arg), (col_lse, _, col_arg) = ring_visit(
      visit, local, k, travel, axes=axes, size=size)
  return (row_lse, col_lse, row_arg, col_arg), (q, k, scale, row_lse, col_lse)


def _ring_lse_bwd(tile, axes, size, residuals, cotangents):
  q, k, scale, row_lse, col_lse = residuals
  g_row, g_col = cotangents[0], cotangents[1]  # the argmax outputs have no gradient
  b = q.shape[0]

  def visit(local, block, dk, src):
    del src

    def body(acc, xs):
      dq, dscale = acc
      k_tile, ok, c_lse, g_c = xs
      z, dots = _scores(q, k_tile, ok, scale)
      p_row = jnp.exp(z - row_lse[:, None])  # softmax over this row's columns
      p_col = jnp.exp(z - c_lse[None, :])    # softmax over this column's rows
      dz = jnp.where(ok[None, :], g_row[:, None] * p_row + g_c[None, :] * p_col, 0.0)
      return (dq + scale * dz @ k_tile, dscale + jnp.sum(dz * dots)), scale * dz.T @ q

    k_blk, lse_blk, g_blk = block
    xs = (tile_rows(k_blk, tile), tile_valid(b, tile), tile_rows(lse_blk, tile),
          tile_rows(g_blk, tile))
    local, dk_tiles = lax.scan(body, local, xs)
    return local, dk + untile_rows(dk_tiles, b)

  (dq, dscale), dk = ring_visit(visit, (q * 0, jnp.sum(q * 0)), (k, col_lse, g_col), k * 0,
                                axes=axes, size=size)
  return dq, dk, dscale


ring_lse.defvjp(_ring_lse_fwd, _ring_lse_bwd)


def make_tiled_softmax_loss(mesh: Mesh, batch_axes, label_smoothing: float = 0.0,
                            tile: int = 1024) -> LossFn:
  """Same loss and metrics as `make_softmax_loss`, with O(b x tile) score memory and a ring."""
  axes = tuple(batch_axes)
  size = ring_size(mesh, axes)
  eps = label_smoothing

  def per_device(img, txt, scale):
    img, txt = img.astype(jnp.float32), txt.astype(jnp.float32)
    local = img.shape[0]
    total = local * size
    labels = lax.axis_index(axes) * local + jnp.arange(local)
    # Per-device use of the shared scale: the transpose of this pcast is the psum of its gradient.
    row_lse, col_lse, row_arg, col_arg = ring_lse(
        img, txt, lax.pcast(scale, axes, to='varying'), min(tile, local), axes, size)
    # The linear terms need no ring: S_ii, and row/column means through the mean embeddings.
    target = scale * jnp.sum(img * txt, axis=1)
    mean_txt = lax.psum(jnp.sum(txt, axis=0), axes) / total
    mean_img = lax.psum(jnp.sum(img, axis=0), axes) / total
    ce_i2t = row_lse - (1 - eps) * target - eps * scale * (img @ mean_txt)
    ce_t2i = col_lse - (1 - eps) * target - eps * scale * (txt @ mean_img)
    loss = lax.psum(jnp.sum(ce_i2t) + jnp.sum(ce_t2i), axes) / (2 * total)
    metrics = {'acc_i2t': lax.psum(jnp.sum(row_arg == labels), axes) / total,
               'acc_t2i': lax.psum(jnp.sum(col_arg == labels), axes) / total}
    return loss, metrics

  return jax.shard_map(per_device, mesh=mesh, in_specs=(P(axes), P(axes), P()),
                       out_specs=(P(), P()), check_vma=True)

"""Pallas splash attention (`model.attention = 'splash'`): TPU's fused flash-attention kernel.

jax.experimental.pallas.ops.tpu.splash_attention computes softmax(q k^T) v block by block in VMEM,
never writing the [B, heads, T, T] scores to HBM. It takes one example's [heads, T, d] and a
static mask over a length that is a multiple of its 128-token blocks; our towers' lengths (50,
77, 197, 257, 577) are not, so q, k, v are padded to one. What the models' masks become:
- causal: splash's static CausalMask over the padded length (padding follows every real token,
  so no real query sees a padded key);
- padding: segment ids, per example: every query is in segment 1, a key is in segment 1 when
  valid (and in the real length) and 0 otherwise, so a query attends only to valid keys.
The kernel runs per batch shard (jax.shard_map over the batch axes when the step pins
activations to a mesh): GSPMD cannot partition a Mosaic custom call, and would otherwise gather
the whole batch onto every chip. `interpret=True` runs the kernel's Python on any backend (tests).
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec

from pretrain.parallel import activations

Array = jax.Array
BLOCK = 128  # splash's default block sizes (BlockSizes.get_default): lengths pad to a multiple.


@functools.lru_cache(maxsize=None)
def _kernel(heads: int, length: int, causal: bool, interpret: bool):
  """The splash kernel for `heads` heads over `length` (a multiple of BLOCK) tokens."""
  shape = (length, length)
  mask = splash.CausalMask(shape) if causal else splash.FullMask(shape)
  return splash.make_splash_mha(splash.MultiHeadMask([mask] * heads), head_shards=1,
                                q_seq_shards=1, block_sizes=splash.BlockSizes.get_default(),
                                interpret=interpret)


def _local(q: Array, k: Array, v: Array, key_mask: Array | None, causal: bool,
           interpret: bool) -> Array:
  """Splash attention over a local batch [b, T, heads, d] (no sharding)."""
  batch, length, heads, head_dim = q.shape
  padded = -(-length // BLOCK) * BLOCK
  pad = ((0, 0), (0, padded - length), (0, 0), (0, 0))
  # [b, heads, T', d]; the 1/sqrt(d) scale folded into q (splash applies none).
  q, k, v = (jnp.swapaxes(jnp.pad(t, pad), 1, 2) for t in (q * head_dim ** -0.5, k, v))
  valid = jnp.broadcast_to(jnp.arange(padded) < length, (batch, padded))
  if key_mask is not None:
    valid = valid & jnp.pad(key_mask, ((0, 0), (0, padded - length)))
  segments = splash.SegmentIds(q=jnp.ones((batch, padded), jnp.int32), kv=valid.astype(jnp.int32))
  out = jax.vmap(_kernel(heads, padded, causal, interpret))(q, k, v, segment_ids=segments)
  return jnp.swapaxes(out, 1, 2)[:, :length].astype(q.dtype)


def attention(q: Array, k: Array, v: Array, key_mask: Array | None = None, causal: bool = False,
              *, interpret: bool = False) -> Array:
  """softmax(q k^T / sqrt(d), masked) v over [B, T, heads, d] by the splash kernel."""
  local = functools.partial(_local, causal=causal, interpret=interpret)
  mesh = activations.activation_mesh()
  if mesh is None or q.shape[0] % activations.batch_shards(mesh):
    return local(q, k, v, key_mask)
  rows = PartitionSpec(activations.BATCH_AXES)
  # check_vma off: the Pallas call's output carries no varying-axes type for shard_map to check.
  per_shard = functools.partial(jax.shard_map, mesh=mesh, out_specs=rows, check_vma=False)
  if key_mask is None:
    return per_shard(lambda q, k, v: local(q, k, v, None), in_specs=(rows,) * 3)(q, k, v)
  return per_shard(local, in_specs=(rows,) * 4)(q, k, v, key_mask)

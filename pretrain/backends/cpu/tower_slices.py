"""A tower over slices of each device's batch, as separate computations (`config.tower_batch_chunks`).

On XLA:CPU a tower applied to a whole batch is one chain of operations, some of which run on one
thread (the batched attention matmuls, YNNPACK's). Applied to a few slices of the batch instead,
the slices are independent chains that XLA's thunk executor runs side by side, so both cores stay
busy. Run one after another (lax.map) the same slices gain nothing: it is the concurrency, not the
cache. Same maths: every example goes through the same operations, the embeddings come back in the
batch's order, and the parameters' gradients are summed over the slices by autodiff. Measured
figures: benchmarks/README.md ("Tower slices").

The slices are taken inside each device's part of the batch (parallel/batch_slices.py), so no
example changes device. Off the CPU, pretrain.backends.resolve_for_platform sets one slice.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from pretrain.backends import AUTO_CHUNKS as AUTO  # `tower_batch_chunks = 0`: the rule below.
from pretrain.parallel.batch_slices import join_rows, split_rows

# Tried in order; the first that leaves MIN_CHUNK examples per slice. Not 8: each slice is compiled
# code of its own, and 8 slices cost noticeably more resident memory for little more speed.
AUTO_CHUNKS = (4, 2)
# Examples per slice at least: below that, two slices run as fast as four with less memory.
MIN_CHUNK = 16


def resolve_chunks(setting: int, per_device_batch: int, params_sharded: bool) -> int:
  """The number of slices on the CPU: `setting`, or for AUTO the choice above.

  AUTO is 1 where parameters are sharded (FSDP): there every slice would gather the weights again.
  """
  if setting != AUTO:
    return setting
  if params_sharded:
    return 1
  for chunks in AUTO_CHUNKS:
    if per_device_batch % chunks == 0 and per_device_batch // chunks >= MIN_CHUNK:
      return chunks
  return 1


def map_over_chunks(fn: Callable[[jax.Array], jax.Array], batch: jax.Array, chunks: int,
                    shards: int) -> jax.Array:
  """fn(batch), computed as `chunks` calls on slices of each of the `shards` devices' parts.

  `batch` is split over `shards` devices on axis 0 (shard-major, as the batch sharding lays it
  out); `fn` maps [n, ...] to [n, ...] example by example.
  """
  if chunks == 1:
    return fn(batch)
  sliced = split_rows(batch, chunks, shards)
  return join_rows(jnp.stack([fn(sliced[c]) for c in range(chunks)]), shards)

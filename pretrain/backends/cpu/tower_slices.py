"""A tower over slices of each device's batch, as separate computations (`config.tower_batch_chunks`).

On XLA:CPU a tower applied to a whole batch is one chain of operations, some of which run on one
thread (the batched attention matmuls, YNNPACK's). Applied to a few slices of the batch instead,
the slices are independent chains that XLA's thunk executor runs side by side, so both cores stay
busy (`tiny` fp32 step 5.07 -> 4.76 s with 4 slices, 4.57 s with 8). Run one after another
(lax.map) the same slices gain nothing: it is the concurrency, not the cache. Same maths: every
example goes through the same operations, the embeddings come back in the batch's order, and the
parameters' gradients are summed over the slices by autodiff.

The slices are taken inside each device's part of the batch, so no example changes device.
"""

from typing import Callable

import jax
import jax.numpy as jnp

AUTO = 0          # `tower_batch_chunks = 0`: AUTO_CHUNKS on the CPU backend, 1 elsewhere.
# Tried in order; the first that leaves MIN_CHUNK examples per slice. Not 8: each slice is compiled
# code of its own, and 8 slices add 0.4 GB of RSS on `tiny` (3.61 -> 4.02 GB; 4 slices 3.75).
AUTO_CHUNKS = (4, 2)
# Examples per slice at least: `b32` (32 per device) runs as well on 2 slices as on 4 (4.12 vs
# 4.06-4.08 ex/s) with less memory (4.89 vs 5.14 GB; 4.79 unsliced).
MIN_CHUNK = 16


def resolve_chunks(setting: int, per_device_batch: int, platform: str,
                   params_sharded: bool) -> int:
  """The number of slices: `setting`, or for AUTO the CPU choice above.

  AUTO is 1 on accelerators, and where parameters are sharded (FSDP): there every slice would
  gather the weights again (38 -> 149 all-gathers on a 2 x 4 mesh, 4 slices).
  """
  if setting != AUTO:
    return setting
  if platform != 'cpu' or params_sharded:
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
  size, rest = batch.shape[0], batch.shape[1:]
  per_slice = size // (shards * chunks)
  if per_slice * shards * chunks != size:
    raise ValueError(f'batch of {size} does not split into {chunks} slices on each of {shards} '
                     'devices (tower_batch_chunks)')
  grouped = batch.reshape(shards, chunks, per_slice, *rest)
  outputs = [fn(grouped[:, c].reshape(shards * per_slice, *rest)) for c in range(chunks)]
  stacked = jnp.stack([out.reshape(shards, per_slice, *out.shape[1:]) for out in outputs], axis=1)
  return stacked.reshape(size, *stacked.shape[3:])

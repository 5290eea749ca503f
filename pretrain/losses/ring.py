"""A ring over the batch axes: each device visits every device's block, one tile at a time.

Used inside `jax.shard_map` by the ring losses (tiled softmax, SigLIP sigmoid). A block of keys
(local text embeddings) and the state that belongs to it ("travel": column statistics in the
forward pass, gradient accumulators in the backward pass) move to the next device with
`ppermute` after each visit; after the last visit only the travel state takes one more hop, which
brings it back to the block's owner. Nothing is all-gathered: per device memory is O(b x d) for
blocks plus O(b x tile) for one tile of scores, whatever the global batch.
"""

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh

Visit = Callable[[Any, Any, Any, jax.Array], tuple[Any, Any]]


def ring_size(mesh: Mesh, axes: Sequence[str]) -> int:
  """Number of devices along the (flattened) batch axes."""
  size = 1
  for axis in axes:
    size *= mesh.shape[axis]
  return size


def ring_visit(visit: Visit, local: Any, block: Any, travel: Any, *, axes: tuple[str, ...],
               size: int) -> tuple[Any, Any]:
  """visit(local, block, travel, src) on the blocks of devices me, me-1, ..., me-size+1.

  Returns the final `local` state and this device's own `travel` state, home after its tour.
  """
  if size == 1:
    return visit(local, block, travel, lax.axis_index(axes))
  me = lax.axis_index(axes)
  perm = [(i, (i + 1) % size) for i in range(size)]
  send = lambda tree: jax.tree.map(lambda x: lax.ppermute(x, axes, perm), tree)

  def hop(carry, h):
    local, block, travel = carry
    local, travel = visit(local, block, travel, (me - h) % size)
    return (local, send(block), send(travel)), None

  (local, block, travel), _ = lax.scan(hop, (local, block, travel), jnp.arange(size - 1))
  local, travel = visit(local, block, travel, (me - (size - 1)) % size)
  return local, send(travel)


def tile_rows(x: jax.Array, tile: int, fill: float = 0.0) -> jax.Array:
  """[n, ...] -> [ceil(n / tile), tile, ...], padded with `fill`."""
  count = -(-x.shape[0] // tile)
  pad = [(0, count * tile - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
  return jnp.pad(x, pad, constant_values=fill).reshape(count, tile, *x.shape[1:])


def untile_rows(x: jax.Array, n: int) -> jax.Array:
  """Inverse of `tile_rows`: [count, tile, ...] -> [n, ...]."""
  return x.reshape(-1, *x.shape[2:])[:n]


def tile_starts(n: int, tile: int) -> jax.Array:
  """[count]: the first row index of each tile of `tile_rows`."""
  return jnp.arange(0, -(-n // tile) * tile, tile)


def tile_valid(n: int, tile: int) -> jax.Array:
  """[count, tile] booleans: which padded positions hold a real row."""
  count = -(-n // tile)
  return (jnp.arange(count * tile) < n).reshape(count, tile)

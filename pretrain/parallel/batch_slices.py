"""Slices of a batch that keep every row on its device: gradient caching's micro-batches and the
CPU tower slices both cut each device's part of the batch, never the batch as a whole."""

import jax


def split_rows(x: jax.Array, pieces: int, shards: int) -> jax.Array:
  """[B, ...] -> [pieces, B/pieces, ...]: piece j holds rows j*m:(j+1)*m of each of the `shards`
  devices' parts of axis 0 (shard-major, as the batch sharding lays them out; m = B/shards/pieces).
  """
  size, rest = x.shape[0], x.shape[1:]
  per_piece = size // (shards * pieces)
  if per_piece * shards * pieces != size:
    raise ValueError(f'batch of {size} does not split into {pieces} slices on each of {shards} '
                     'devices')
  x = x.reshape(shards, pieces, per_piece, *rest).swapaxes(0, 1)
  return x.reshape(pieces, shards * per_piece, *rest)


def join_rows(x: jax.Array, shards: int) -> jax.Array:
  """Inverse of `split_rows`: [pieces, n, ...] -> [pieces*n, ...] in the original row order."""
  pieces, rest = x.shape[0], x.shape[2:]
  x = x.reshape(pieces, shards, -1, *rest).swapaxes(0, 1)
  return x.reshape(-1, *rest)

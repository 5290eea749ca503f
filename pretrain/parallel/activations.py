"""Activation sharding constraints: keep block activations split over the batch axes (FSDP)."""

import contextlib
import contextvars
from typing import Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pretrain.parallel.sharding import BATCH_AXES  # noqa: F401 (re-exported)

Array = jax.Array

_ACTIVATION_MESH: contextvars.ContextVar = contextvars.ContextVar('activation_mesh', default=None)


@contextlib.contextmanager
def activations_split_over(mesh: Mesh) -> Iterator[None]:
  """While tracing inside this block, `batch_sharded` pins activations to `mesh`'s batch axes."""
  token = _ACTIVATION_MESH.set(mesh)
  try:
    yield
  finally:
    _ACTIVATION_MESH.reset(token)


def batch_sharded(x: Array) -> Array:
  """Keeps an activation split over the batch axes inside `activations_split_over(mesh)`.

  With FSDP, GSPMD may otherwise shard activations' feature dimension like the weights and then
  replicate whole activations to undo it; pinning the batch split makes it gather weights instead.
  """
  mesh = _ACTIVATION_MESH.get()
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(BATCH_AXES)))


def gathered(table: Array) -> Array:
  """A parameter `table` whole on every device inside `activations_split_over(mesh)`, for a lookup.

  An embedding lookup's gradient is a scatter-add of batch-split rows into the table. Left to
  itself, GSPMD gives that scatter the table's FSDP sharding (features split over 'fsdp') and
  cannot move the batch-split rows there except by replicating them in full ("[SPMD] Involuntary
  full rematerialization"). With the table gathered first, as FSDP gathers every weight it uses,
  the lookup and its scatter stay local to each batch shard, and the gradient is reduce-scattered
  back to the table's sharding.
  """
  mesh = _ACTIVATION_MESH.get()
  if mesh is None:
    return table
  return jax.lax.with_sharding_constraint(table, NamedSharding(mesh, PartitionSpec()))


def activation_mesh() -> Mesh | None:
  """The mesh `activations_split_over` set while tracing (None outside it)."""
  return _ACTIVATION_MESH.get()


def batch_shards(mesh: Mesh) -> int:
  """How many ways the batch axes split a batch on `mesh`."""
  return int(np.prod([mesh.shape[axis] for axis in BATCH_AXES]))

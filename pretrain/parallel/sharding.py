"""The device mesh, parameter placement rules, and global batch assembly."""

import math
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from data.errors import ConfigError

# The batch is split over both axes: `data` replicates parameters, `fsdp` shards them (ZeRO-3 style).
MESH_AXES = ('data', 'fsdp')
BATCH_AXES = MESH_AXES
PARAM_RULES = ('replicate', 'fsdp')


def resolve_mesh_shape(sizes: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Fills one -1 with the rest of the devices and checks the product equals `num_devices`."""
  unknown = set(sizes) - set(MESH_AXES)
  if unknown:
    raise ConfigError(f'unknown mesh axes {sorted(unknown)}; the mesh axes are {MESH_AXES}')
  shape = {axis: int(sizes.get(axis, 1)) for axis in MESH_AXES}
  free = [axis for axis, size in shape.items() if size == -1]
  if len(free) > 1 or any(size == 0 or size < -1 for size in shape.values()):
    raise ConfigError(f'mesh {shape}: sizes must be positive, with at most one -1')
  fixed = math.prod(size for size in shape.values() if size != -1)
  if free:
    if num_devices % fixed:
      raise ConfigError(f'mesh {shape}: {num_devices} devices are not divisible by {fixed}')
    shape[free[0]] = num_devices // fixed
  if math.prod(shape.values()) != num_devices:
    raise ConfigError(f'mesh {shape} has {math.prod(shape.values())} devices, '
                      f'but there are {num_devices}')
  return shape


def make_mesh(sizes: Mapping[str, int], devices: list | None = None) -> Mesh:
  """A mesh over all devices of all processes, with Auto axes (GSPMD-style jit)."""
  devices = jax.devices() if devices is None else devices
  shape = resolve_mesh_shape(sizes, len(devices))
  return jax.make_mesh(tuple(shape.values()), MESH_AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def batch_ways(shape: Mapping[str, int]) -> int:
  """The data-parallel size: how many ways a mesh of `shape` ({axis: size}) splits the batch."""
  return math.prod(shape[axis] for axis in BATCH_AXES)


def batch_parallelism(mesh: Mesh) -> int:
  """How many ways the global batch is split."""
  return batch_ways(mesh.shape)


def param_spec(shape: tuple[int, ...], fsdp_size: int, rule: str, min_size: int) -> P:
  """Replicate, or shard the largest dimension divisible by the fsdp size over `fsdp`."""
  if rule not in PARAM_RULES:
    raise ConfigError(f'unknown param_sharding {rule!r}; expected one of {PARAM_RULES}')
  if rule == 'replicate' or fsdp_size == 1 or math.prod(shape) < min_size:
    return P()
  candidates = [(size, dim) for dim, size in enumerate(shape) if size % fsdp_size == 0]
  if not candidates:
    return P()
  _, dim = max(candidates)
  spec = [None] * len(shape)
  spec[dim] = 'fsdp'
  return P(*spec)


def tree_shardings(tree: Any, mesh: Mesh, rule: str, min_size: int = 2**12) -> Any:
  """NamedShardings for every array leaf of an (abstract) pytree, by `param_spec`."""
  fsdp = mesh.shape['fsdp']
  return jax.tree.map(
      lambda leaf: NamedSharding(mesh, param_spec(tuple(leaf.shape), fsdp, rule, min_size)), tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the batch axes."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  """Same value on every device."""
  return NamedSharding(mesh, P())


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows -> global arrays, each process contributing its contiguous block."""
  sharding = batch_sharding(mesh)
  return {key: jax.make_array_from_process_local_data(sharding, value)
          for key, value in local.items()}

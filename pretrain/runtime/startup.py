"""What a job says when it starts: the run, its devices and mesh, model, batch and data.

The block is built by pure functions of plain values (`describe_run`, `describe_eval`), so tests
check its fields; the trainer and eval jobs gather the values and print it on process 0.
"""

import dataclasses
import time
from typing import Any, Iterator
from contextlib import contextmanager

import jax
import numpy as np

TOWERS = {'img': 'image', 'txt': 'text'}  # top-level parameter groups of the dual encoder


@dataclasses.dataclass(frozen=True)
class Devices:
  """The machine a job runs on, as plain values."""

  platform: str
  process_count: int
  device_count: int
  local_device_count: int
  mesh_shape: dict[str, int]  # axis name -> size, in mesh order

  @classmethod
  def of(cls, mesh) -> 'Devices':
    """This process's view of `mesh` and the jax runtime."""
    return cls(jax.default_backend(), jax.process_count(), jax.device_count(),
               jax.local_device_count(), dict(mesh.shape))


def count_params(params: Any) -> dict[str, int]:
  """Parameters per tower ('image', 'text'), the rest ('other': temperature, bias) and 'total';
  leaves may be arrays or shape structs."""
  counts = {'image': 0, 'text': 0, 'other': 0}
  for key, subtree in params.items():
    n = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(subtree))
    counts[TOWERS.get(key, 'other')] += n
  counts['total'] = sum(counts.values())
  return counts


def _millions(n: int) -> str:
  return f'{n / 1e6:.2f}M' if n >= 10_000 else str(n)


def describe_devices(devices: Devices) -> str:
  """'devices: 2 process(es) x 4 cpu device(s) = 8; mesh data=4 x fsdp=2 (axes data, fsdp)'."""
  shape = ' x '.join(f'{name}={size}' for name, size in devices.mesh_shape.items())
  return (f'devices: {devices.process_count} process(es) x {devices.local_device_count} '
          f'{devices.platform} device(s) = {devices.device_count}; mesh {shape} '
          f'(axes {", ".join(devices.mesh_shape)})')


def describe_data(name: str, size: int, shards: int = 0) -> str:
  """'NAME: 200000 samples' (and 'in 12 shards' when the source has shards)."""
  return f'{name}: {size} samples' + (f' in {shards} shards' if shards else '')


def describe_config(config_spec: str, overrides: list[str] = ()) -> str:
  """'config: configs/demo.py, variant tiny; overrides: batch_size=64' from 'PATH[:VARIANT]'."""
  path, _, variant = config_spec.partition(':')
  line = f'config: {path}, variant {variant or "(default)"}'
  return line + (f'; overrides: {" ".join(overrides)}' if overrides else '')


def describe_run(*, workdir: str, config: str, resumed_from: int | None,
                 devices: Devices, params: dict[str, int], global_batch: int, batch_ways: int,
                 accum_steps: int, data: str, total_steps: int) -> list[str]:
  """The trainer's start-up block, one field per line (`config` from describe_config, `params`
  from count_params, `data` from describe_data)."""
  per_device = global_batch // max(batch_ways, 1)
  micro = f', {per_device // accum_steps} per tower pass (accum_steps {accum_steps})' \
      if accum_steps > 1 else ''
  start = 'fresh (step 0)' if resumed_from is None else f'resumed from step {resumed_from}'
  return [
      f'run: {workdir}',
      config,
      f'start: {start}; total_steps {total_steps}',
      describe_devices(devices),
      f'parameters: image {_millions(params["image"])}, text {_millions(params["text"])}, '
      f'total {_millions(params["total"])} ({params["total"]})',
      f'batch: global {global_batch}, per device {per_device} '
      f'(batch split {batch_ways} ways){micro}',
      f'data: {data}',
  ]


def describe_eval(*, workdir: str, step: int, devices: Devices | None) -> list[str]:
  """An eval job's lines on restoring a checkpoint: which run and step (and, the first time,
  its devices and mesh)."""
  lines = [f'checkpoint: step {step} of {workdir}']
  return lines + [describe_devices(devices)] if devices else lines


def print_block(lines: list[str]) -> None:
  """Prints the block on process 0, at once (a log shows it before the compile)."""
  if jax.process_index() == 0:
    print('\n'.join(lines), flush=True)


@contextmanager
def compiling(what: str) -> Iterator[None]:
  """Prints 'compiling WHAT...' and, once done, 'compiled in X s' (process 0)."""
  main = jax.process_index() == 0
  if main:
    print(f'compiling {what}...', flush=True)
  start = time.perf_counter()
  yield
  if main:
    print(f'compiled in {time.perf_counter() - start:.1f} s', flush=True)

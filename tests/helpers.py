"""Shared test helpers: tiny configs, meshes and running the trainer in a fresh process."""

import json
import os
import subprocess
import sys

import jax
import numpy as np

from configs.common import base_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config():
  """The demo config shrunk so a step compiles and runs in about a second."""
  config = base_config()
  config.model.update(dict(image_size=16, context_length=8))
  config.batch_size = 16
  return config


def random_batch(config, n: int, seed: int = 0) -> dict:
  """n random uint8 images and captions (end-of-text id 2, then padding 0) for `config`."""
  rng = np.random.default_rng(seed)
  size, ctx = config.model.image_size, config.model.context_length
  text = rng.integers(3, 40, (n, ctx)).astype(np.int32)
  text[:, -2], text[:, -1] = 2, 0
  return {'image': rng.integers(0, 256, (n, size, size, 3), np.uint8), 'text': text}


def step_builder(config, the_mesh):
  """The StepBuilder of `config` on `the_mesh` (AdamW and schedule from `config.optim`)."""
  from pretrain.step.optim import make_optimizer
  from pretrain.step.train_step import StepBuilder
  tx, schedule = make_optimizer(config.optim, config.total_steps)
  return StepBuilder(config, the_mesh, tx, schedule)


def loss_and_grads(config, the_mesh, batch, params=None):
  """(loss, metrics, grads) of the train step's loss on `batch`, fetched to the host."""
  from pretrain.parallel.sharding import batch_sharding
  builder = step_builder(config, the_mesh)
  params = builder.init_state().params if params is None else params
  sharded = {k: jax.device_put(v, batch_sharding(the_mesh)) for k, v in batch.items()}
  (loss, metrics), grads = jax.jit(builder.loss_and_grads)(params, sharded)
  return float(loss), jax.device_get(metrics), jax.device_get(grads)


def loss_and_grads_temp_bytes(config, the_mesh) -> int:
  """XLA's temporary bytes for the compiled loss + gradients of `config` (abstract batch)."""
  builder = step_builder(config, the_mesh)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
           for k, v in random_batch(config, config.batch_size).items()}
  lowered = jax.jit(builder.loss_and_grads).lower(builder.abstract_state.params, batch)
  return lowered.compile().memory_analysis().temp_size_in_bytes


def max_tree_diff(a, b) -> float:
  """Largest absolute difference between two pytrees of arrays of the same structure."""
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def mesh(data: int, fsdp: int, devices=None):
  """An Auto-axes data x fsdp mesh over the first data*fsdp devices."""
  devices = jax.devices()[:data * fsdp] if devices is None else devices
  return jax.make_mesh((data, fsdp), ('data', 'fsdp'), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)


def shared_compile_cache(overrides) -> list[str]:
  """`--config.compile_cache_dir=` the suite's one cache, unless `overrides` choose a cache.

  Most tests train the same few tiny configs, so the suite compiles each program once instead of
  once per test; jax keys an entry by program, devices and compile options, so a loaded program is
  the one a fresh compile builds. tests/conftest.py names the folder for the session.
  """
  folder = os.environ.get('PRETRAIN_TEST_COMPILE_CACHE')
  if not folder or any(o.startswith('--config.compile_cache_dir') for o in overrides):
    return []
  return [f'--config.compile_cache_dir={folder}']


def run_train(workdir, *overrides, config='configs/demo.py', devices=8, timeout=600):
  """Runs `python -m pretrain.train` in a fresh process; returns the CompletedProcess."""
  overrides = (*overrides, *shared_compile_cache(overrides))
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['PYTHONPATH'] = ROOT
  cmd = [sys.executable, '-m', 'pretrain.train', '--config', config, '--workdir', str(workdir),
         *overrides]
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def read_metrics(workdir, evals: bool = False) -> list[dict]:
  """The training rows of WORKDIR/metrics.jsonl (those with a loss); `evals`: the others (the
  final zero-shot eval's)."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  return [r for r in rows if ('loss' in r) != evals]


def tb_events(folder) -> list[tuple[int, str, float | str]]:
  """(step, tag, value) of every TensorBoard summary under `folder`: scalars as written (float32),
  text as its string."""
  import struct
  from tensorboardX.proto import event_pb2
  found = []
  for name in sorted(os.listdir(folder)):
    with open(os.path.join(folder, name), 'rb') as f:
      data = f.read()
    at = 0
    while at < len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
      (length,) = struct.unpack('<Q', data[at:at + 8])
      event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
      at += 12 + length + 4
      for v in event.summary.value:
        text = v.metadata.plugin_data.plugin_name == 'text'
        found.append((event.step, v.tag, v.tensor.string_val[0].decode() if text
                      else v.simple_value))
  return found


def resident_bytes() -> int:
  """This process's resident set size now (Linux)."""
  with open('/proc/self/statm') as statm:
    return int(statm.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')

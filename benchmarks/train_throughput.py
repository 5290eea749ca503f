"""Examples/s and FLOP/s of the train step on synthetic, device-resident batches.

  python -m benchmarks.train_throughput --config tiny|b32|demo|align_tiny|align_b7 [--steps N]
      [--out FILE] [--smoke] [--set FIELD=VALUE ...]

Prints examples/s (median of timed steps after compile), model FLOPs per step (XLA cost analysis),
achieved FLOP/s, and that as a fraction of a 4096^2 fp32 matmul measured in the same run.
"""

from pretrain.backends.cpu import host_memory

if __name__ == '__main__':  # first, before jax loads: the train step as pretrain/train.py runs it
  host_memory.restart_with_huge_page_malloc()

import argparse
import os
import platform
import resource
import statistics
import sys

import jax
import numpy as np

from data.records import BAD_KINDS
from benchmarks.common import matmul_peak_flops, median_seconds, peak_rss_bytes, print_table, write_json
from pretrain.parallel import sharding
from pretrain.config.cli import apply_override, load_config_file
from pretrain.step.optim import make_optimizer
from pretrain.plan import step_flops
from pretrain.backends.cpu.prefault import for_compiled_step
from pretrain.step.train_step import StepBuilder

CONFIGS = {'tiny': 'configs/demo.py:tiny', 'b32': 'configs/clip_vit_b32.py', 'demo': 'configs/demo.py',
           'align_tiny': 'configs/align.py:tiny', 'align_b7': 'configs/align.py:b7'}
BATCH = {'tiny': 256, 'b32': 32, 'demo': 128, 'align_tiny': 64, 'align_b7': 8}


def bench_config(name: str, smoke: bool, overrides: list[str]):
  """The benchmark's config: `tiny` or `b32` on one host's devices, fp32."""
  config = load_config_file(CONFIGS[name])
  config.batch_size = BATCH[name]
  config.mesh.update(dict(data=-1, fsdp=1))
  config.optim.warmup_steps = 0
  if smoke:  # CI: same code path, sizes that compile in seconds.
    config.model.update(dict(variant='demo', image_size=32, vocab_size=64, context_length=8))
    config.batch_size = 16
  for item in overrides:
    field, _, value = item.partition('=')
    apply_override(config, field, value)
  return config


def synthetic_batch(config, mesh) -> dict:
  """Random uint8 images and token ids with an end-of-text token, already on the devices."""
  rng = np.random.default_rng(0)
  n, size, ctx = config.batch_size, config.model.image_size, config.model.context_length
  text = rng.integers(3, config.model.vocab_size, (n, ctx)).astype(np.int32)
  lengths = rng.integers(2, ctx + 1, n)
  text[np.arange(ctx)[None, :] >= lengths[:, None]] = 0
  text[np.arange(n), lengths - 1] = 2
  batch = {'image': rng.integers(0, 256, (n, size, size, 3), np.uint8), 'text': text,
           'bad': np.zeros((n, len(BAD_KINDS)), np.int32)}
  return sharding.global_batch(batch, mesh)


def bench_setup(name: str, smoke: bool, overrides: list[str]):
  """-> (config, step builder, fresh train state, synthetic batch) of a benchmark config."""
  config = bench_config(name, smoke, overrides)
  mesh = sharding.make_mesh(dict(config.mesh))
  tx, schedule = make_optimizer(config.optim, 10_000)
  builder = StepBuilder(config, mesh, tx, schedule)
  return config, builder, builder.init_state(), synthetic_batch(config, mesh)


def run(name: str, steps: int, smoke: bool, overrides: list[str]) -> dict:
  """Compiles and times the train step; returns the measured row."""
  config, builder, state, batch = bench_setup(name, smoke, overrides)
  step = builder.jit_step()
  compiled = step.lower(state, batch).compile()
  host_memory.release_freed_memory()  # as pretrain/train.py does after compiling
  temp_bytes = compiled.memory_analysis().temp_size_in_bytes
  flops = step_flops(compiled)
  holder, kernel_seconds = [state], []
  prefault = for_compiled_step(compiled, builder.config.prefault_step_memory)  # as the loop does

  def one_step():
    kernel_before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    holder[0], metrics = prefault.dispatch(compiled, holder[0], batch)
    jax.block_until_ready(metrics)
    kernel_seconds.append(resource.getrusage(resource.RUSAGE_SELF).ru_stime - kernel_before)

  one_step()  # warm-up, excluded
  seconds = median_seconds(one_step, steps)
  peak = matmul_peak_flops(1024 if smoke else 4096)
  return {'config': name + (' (smoke)' if smoke else ''), 'batch': config.batch_size,
          'accum_steps': config.accum_steps,
          'dtype': config.model.dtype, 'examples_per_s': round(config.batch_size / seconds, 2),
          'step_s': round(seconds, 4), 'gflop_per_step': round(flops / 1e9, 1),
          'achieved_gflop_s': round(flops / seconds / 1e9, 1),
          'matmul_peak_gflop_s': round(peak / 1e9, 1),
          'fraction_of_peak': round(flops / seconds / peak, 3),
          'peak_rss_gb': round(peak_rss_bytes() / 2**30, 2),
          'xla_temp_gb': round(temp_bytes / 2**30, 3),
          'kernel_s_per_step': round(statistics.median(kernel_seconds[1:]), 3),
          'prefaulted': prefault.populated_bytes > 0,
          'glibc_tunables': os.environ.get('GLIBC_TUNABLES') or 'none'}


def main(argv: list[str]) -> int:
  """Command-line entry point."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', choices=sorted(CONFIGS), required=True)
  parser.add_argument('--steps', type=int, default=10, help='timed steps (median reported)')
  parser.add_argument('--out', default=None, help='JSON output (default benchmarks/results/...)')
  parser.add_argument('--smoke', action='store_true', help='tiny sizes, for CI')
  parser.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                      help='config override, e.g. --set model.dtype=bfloat16')
  args = parser.parse_args(argv)
  row = run(args.config, args.steps, args.smoke, args.set)
  print_table([row], list(row))
  out = args.out or f'benchmarks/results/train_throughput_{args.config}.json'
  write_json(out, {'results': [row], 'devices': [str(d) for d in jax.devices()],
                   'machine': platform.processor() or platform.machine()})
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))

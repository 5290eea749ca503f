"""CLIP train-step speed on the accelerator at hand: step time, examples/s/chip, FLOPs, MFU, memory.

  python -m benchmarks.accelerator [--models b32,b16,l14] [--dtypes bfloat16,float32]
      [--attention auto|xla,cudnn,...] [--batch_per_chip N] [--steps 10] [--smoke] [--out FILE]

Each (model, dtype, attention) row is configs/clip.py:MODEL as written (remat included) on every
local device (pure data parallelism, `data=-1, fsdp=1`), with layers unrolled so XLA's cost analysis
sees every layer, a synthetic batch, and `--steps` timed steps after two warm-up steps (the mean of
back-to-back steps: the loop's dispatch overlaps the device). Each row runs in its own process, so
peak device memory is that row's and an out-of-memory row is recorded, not fatal.

Columns: step time; examples/s per chip; model TFLOP per chip and step, counted analytically
(6 x parameters-in-matmuls x tokens plus attention's T^2 terms and the loss: what MFU counts, no
remat recompute, full T^2 for the causal text tower); XLA's own count from the compiled step's cost
analysis (it adds remat recompute and omits custom-call kernels such as cuDNN attention, so it is a
cross-check, not the numerator); MFU = model FLOP/s over the chip's published dense peak for the
dtype (PEAKS below; fp32 rows against TF32 on GPUs and bf16 on TPUs, which is what XLA's default
matmul precision runs fp32 dots as there); peak device memory (`memory_stats()['peak_bytes_in_use']`
where the backend reports it) and XLA's temporaries. An attention implementation the config refuses
for this platform or dtype (e.g. cuDNN with fp32 inputs) is listed under `skipped` with the reason.
`--smoke`: CPU-sized towers, two steps (CI).
"""

import argparse
import json
import os
import subprocess
import sys
import time

# device_kind substring (lower case, first match wins) -> (bf16 dense TFLOP/s, fp32-as-run TFLOP/s).
# GPUs: NVIDIA datasheets, SXM dense (no sparsity); fp32 = TF32 tensor-core dense. TPUs: Google
# Cloud's per-chip bf16 peaks; fp32 dots run as bf16 passes at XLA's default precision.
PEAKS = (
    ('h200', 989.0, 494.7),          # same tensor cores as H100 SXM, more and faster memory
    ('h100 pcie', 756.0, 378.0),
    ('h100', 989.0, 494.7),          # H100 SXM ('NVIDIA H100 80GB HBM3')
    ('a100', 312.0, 156.0),
    ('v6 lite', 918.0, 918.0), ('v6e', 918.0, 918.0),
    ('v5 lite', 197.0, 197.0), ('v5e', 197.0, 197.0),
    ('v5p', 459.0, 459.0), ('tpu v5', 459.0, 459.0),
    ('v4', 275.0, 275.0),
)
# Per-chip batches people train these at on 80 GiB GPUs / 32-95 GiB TPUs (CLIP's 32,768 over 128-256
# chips); override with --batch_per_chip.
BATCH_PER_CHIP = {'b32': 256, 'b16': 128, 'l14': 64, 'l14_336': 32}
SMOKE_MODEL = dict(variant='demo', image_size=32, vocab_size=64, context_length=8)
COLUMNS = ['model', 'dtype', 'attention', 'batch_per_chip', 'step_ms', 'examples_s_chip',
           'model_tflop', 'xla_tflop', 'mfu', 'peak_tflop_s', 'peak_mem_gib', 'xla_temp_gib']


def chip_peak(device_kind: str, dtype: str) -> float | None:
  """The chip's published dense TFLOP/s for `dtype`, or None for a chip not in PEAKS."""
  kind = device_kind.lower()
  for key, bf16, fp32 in PEAKS:
    if key in kind:
      return bf16 if dtype == 'bfloat16' else fp32
  return None


def tower_forward_flops(tokens: int, width: int, depth: int, mlp: int) -> int:
  """Forward FLOPs of one example through `depth` transformer blocks: the four projections and
  the MLP (2 FLOPs per multiply-add) and attention's scores and weighted sum (full T x T)."""
  return depth * (2 * tokens * (4 * width * width + 2 * width * mlp) + 4 * tokens * tokens * width)


def model_flops_per_chip(config, per_chip: int, chips: int) -> float:
  """Training FLOPs one chip does per step, analytically (forward x 3, no recompute)."""
  from pretrain.models.variants import model_size
  size, model = model_size(config.model), config.model
  grid = (model.image_size // size['patch']) ** 2
  tokens = grid + (1 if model.image_pool == 'cls' else 0)
  image = (tower_forward_flops(tokens, size['image_width'], size['image_depth'], size['image_mlp'])
           + 2 * grid * size['patch'] ** 2 * 3 * size['image_width']     # patch embedding
           + 2 * size['image_width'] * size['embed_dim'])                # projection
  if model.image_pool == 'map':  # one query: keys/values over the tokens, then the head's MLP
    image += 4 * tokens * size['image_width'] ** 2 + 4 * size['image_width'] * size['image_mlp']
  text = (tower_forward_flops(model.context_length, size['text_width'], size['text_depth'],
                              size['text_mlp']) + 2 * size['text_width'] * size['embed_dim'])
  loss = 2 * 2 * per_chip * per_chip * chips * size['embed_dim']  # image rows and text rows
  return 3.0 * ((image + text) * per_chip + loss)


def row_config(model: str, dtype: str, attention: str, per_chip: int, smoke: bool):
  """configs/clip.py:MODEL for this row on the local devices; raises ConfigError if refused."""
  import jax

  from data.errors import ConfigError
  from pretrain.config.cli import load_config_file
  from pretrain.config.validate import check_training

  config = load_config_file(f'configs/clip.py:{model}')
  config.batch_size = per_chip * jax.device_count()
  config.mesh.update(dict(data=-1, fsdp=1))
  config.model.update(dict(dtype=dtype, scan_layers=False))
  config.optim.warmup_steps = 0
  if smoke:
    config.model.update(SMOKE_MODEL)
  if 'attention' in config.model:
    config.model.attention = attention
  elif attention != 'auto':
    raise ConfigError(f'model.attention {attention!r}: this tree has no model.attention field')
  check_training(config, jax.device_count(), jax.process_count())
  return config


def run_row(model: str, dtype: str, attention: str, per_chip: int, steps: int,
            smoke: bool) -> dict:
  """Compiles and times one row's train step in this process."""
  import jax

  from benchmarks.common import matmul_peak_flops
  from benchmarks.train_throughput import synthetic_batch
  from pretrain.parallel import sharding
  from pretrain.plan import step_flops
  from pretrain.step.optim import make_optimizer
  from pretrain.step.train_step import StepBuilder

  config = row_config(model, dtype, attention, per_chip, smoke)
  mesh = sharding.make_mesh(dict(config.mesh))
  tx, schedule = make_optimizer(config.optim, 10_000)
  builder = StepBuilder(config, mesh, tx, schedule)
  state, batch = builder.init_state(), synthetic_batch(config, mesh)
  start = time.perf_counter()
  compiled = builder.jit_step().lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  for _ in range(2):  # warm-up
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready((state, metrics))
  seconds = (time.perf_counter() - start) / steps
  device = jax.devices()[0]
  chips = jax.device_count()
  flops = model_flops_per_chip(config, per_chip, chips)
  if device.platform == 'cpu':  # no published peak: the measured matmul rate of this CPU
    import jax.numpy as jnp
    peak = matmul_peak_flops(1024 if smoke else 4096,
                             jnp.bfloat16 if dtype == 'bfloat16' else jnp.float32) / 1e12
  else:
    peak = chip_peak(device.device_kind, dtype)
  stats = device.memory_stats() or {}
  peak_mem = stats.get('peak_bytes_in_use')
  return {
      'model': model + (' (smoke)' if smoke else ''), 'dtype': dtype, 'attention': attention,
      'resolved_attention': builder.config.model.attention,  # what 'auto' became here
      'batch_per_chip': per_chip, 'chips': chips, 'device': device.device_kind,
      'step_ms': round(seconds * 1e3, 2), 'examples_s_chip': round(per_chip / seconds, 1),
      'model_tflop': round(flops / 1e12, 4), 'xla_tflop': round(step_flops(compiled) / 1e12, 4),
      'mfu': round(flops / seconds / 1e12 / peak, 3) if peak else 'n/a',
      'peak_tflop_s': round(peak, 3) if peak else 'n/a',
      'peak_mem_gib': round(peak_mem / 2 ** 30, 2) if peak_mem else 'n/a',
      'xla_temp_gib': round(compiled.memory_analysis().temp_size_in_bytes / 2 ** 30, 2),
      'compile_s': round(compile_s, 1), 'steps': steps,
      'loss': round(float(metrics['loss']), 4)}


def child(args) -> int:
  """One row in this process: prints 'ROW <json>' or 'SKIP <reason>'."""
  from data.errors import ConfigError
  model, dtype, attention = args.row.split(':')
  try:
    row = run_row(model, dtype, attention, args.batch_per_chip or BATCH_PER_CHIP[model],
                  args.steps, args.smoke)
  except ConfigError as e:
    print('SKIP ' + str(e), flush=True)
    return 0
  print('ROW ' + json.dumps(row), flush=True)
  return 0


def run_in_child(args, model: str, dtype: str, attention: str) -> tuple[str, object]:
  """('row', dict) | ('skipped', reason) | ('failed', last error line) of one row's process."""
  from benchmarks.common import child_env
  cmd = [sys.executable, '-m', 'benchmarks.accelerator', '--row', f'{model}:{dtype}:{attention}',
         '--steps', str(args.steps)] + (['--smoke'] if args.smoke else []) + (
         ['--batch_per_chip', str(args.batch_per_chip)] if args.batch_per_chip else [])
  env = child_env()
  env.update({k: v for k, v in os.environ.items() if k == 'XLA_FLAGS'})  # the caller's, if any
  try:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.row_timeout)
  except subprocess.TimeoutExpired:
    return 'failed', f'over {args.row_timeout} s'
  for line in done.stdout.splitlines():
    if line.startswith('ROW '):
      return 'row', json.loads(line[4:])
    if line.startswith('SKIP '):
      return 'skipped', line[5:]
  lines = [l for l in done.stderr.strip().splitlines() if l.strip()]
  return 'failed', (lines[-1] if lines else f'exit {done.returncode}')[:300]


def main(argv: list[str]) -> int:
  """Command-line entry point."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='b32,b16,l14')
  parser.add_argument('--dtypes', default='bfloat16,float32')
  parser.add_argument('--attention', default='auto',
                      help="model.attention values to try, e.g. 'xla,cudnn' (refused ones skip)")
  parser.add_argument('--batch_per_chip', type=int, default=0, help='0: BATCH_PER_CHIP[model]')
  parser.add_argument('--steps', type=int, default=10, help='timed steps per row')
  parser.add_argument('--row_timeout', type=int, default=600, help='seconds per row process')
  parser.add_argument('--smoke', action='store_true', help='CPU-sized towers, 2 steps (CI)')
  parser.add_argument('--row', default='', help=argparse.SUPPRESS)  # MODEL:DTYPE:ATTENTION
  parser.add_argument('--out', default=None)
  args = parser.parse_args(argv)
  if args.smoke:
    args.models = 'b32' if args.models == parser.get_default('models') else args.models
    args.steps = min(args.steps, 2)
    args.batch_per_chip = args.batch_per_chip or 4
  if args.row:
    return child(args)
  from benchmarks.common import print_table, write_json
  out = args.out or 'benchmarks/results/accelerator.json'
  found = {'results': [], 'skipped': [], 'failed': []}
  for model in args.models.split(','):
    for dtype in args.dtypes.split(','):
      for attention in args.attention.split(','):
        kind, value = run_in_child(args, model, dtype, attention)
        what = f'{model} {dtype} {attention}'
        found['results' if kind == 'row' else kind].append(
            value if kind == 'row' else {'row': what, 'reason': value})
        print(f'{what}: {kind}' + ('' if kind == 'row' else f' ({value})'), flush=True)
        write_json(out, found)  # after every row: a run cut short keeps what it measured
  print_table(found['results'], COLUMNS)
  return 0 if found['results'] and not found['failed'] else 1


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))

"""Our train step against OpenCLIP's on the same machine, alternating A B A B in fresh processes.

  python -m benchmarks.vs_openclip --config tiny|b32 [--dtype float32|bfloat16] [--rounds 2]
      [--steps 5] [--peer_python PATH] [--smoke] [--out FILE]

Each round runs OpenCLIP's training loop (`benchmarks.openclip_step`, in the peers environment
given by --peer_python: `benchmarks/requirements-peers.txt`), then ours
(`benchmarks.train_throughput`), each in its own process with the same thread count (2 here), the
same model and batch, a warm-up step excluded and the median of the timed steps. Model FLOPs per
step are the analytic count of both (3 x the forward matmuls; 0.733 T `tiny`, 1.419 T `b32`), so the
FLOP/s columns compare like with like; the peak is the jitted 4096^2 fp32 matmul of our process in
the same round. bf16 means bf16 matmul inputs with fp32 master weights on both sides (OpenCLIP:
`amp_bf16` autocast). Without --peer_python (CI) only our side runs.

Each process keeps the environment it is given, except that ours restarts itself with glibc's
huge-page malloc as the trainer does (`pretrain/backends/cpu/host_memory.py`); OpenCLIP runs as its users run
it. `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (or `=0`) in this command's environment gives both
sides the same setting; the glibc_tunables column says what each ran with, and kernel_s_per_step
how much of a step each spent in the kernel (mostly page faults on fresh memory; see
benchmarks/README.md).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

from benchmarks.common import ROOT, child_env, print_table, write_json
from benchmarks.train_throughput import bench_config
from pretrain.models.variants import model_size

CONFIGS = ('tiny', 'b32')


def model_flops_per_step(config) -> float:
  """3 x the forward pass's matmul FLOPs (CLS-pooled ViT, causal text tower, B x B logits)."""
  size, model, batch = model_size(config.model), config.model, config.batch_size

  def tower(tokens: int, width: int, depth: int, mlp: int) -> int:
    return depth * tokens * (8 * width * width + 4 * width * mlp + 4 * tokens * width)

  patches = (model.image_size // size['patch']) ** 2
  image = (tower(patches + 1, size['image_width'], size['image_depth'], size['image_mlp'])
           + patches * 2 * size['patch'] ** 2 * 3 * size['image_width']
           + 2 * size['image_width'] * size['embed_dim'])
  text = (tower(model.context_length, size['text_width'], size['text_depth'], size['text_mlp'])
          + 2 * size['text_width'] * size['embed_dim'])
  return 3.0 * (batch * (image + text) + 2 * batch * batch * size['embed_dim'])


def openclip_model_config(config) -> dict:
  """OpenCLIP's model config (`open_clip.CLIP(**it)`) for the same towers as our `config`."""
  size, model = model_size(config.model), config.model
  return dict(
      embed_dim=size['embed_dim'],
      vision_cfg=dict(image_size=model.image_size, layers=size['image_depth'],
                      width=size['image_width'],
                      head_width=size['image_width'] // size['image_heads'],
                      mlp_ratio=size['image_mlp'] / size['image_width'], patch_size=size['patch']),
      text_cfg=dict(context_length=model.context_length, vocab_size=model.vocab_size,
                    width=size['text_width'], heads=size['text_heads'], layers=size['text_depth'],
                    mlp_ratio=size['text_mlp'] / size['text_width']))


def _run_json(command: list[str], out: str) -> dict:
  result = subprocess.run(command, cwd=ROOT, env=child_env(), capture_output=True, text=True)
  if result.returncode:
    raise RuntimeError(f'{" ".join(command[:3])} failed:\n{result.stderr[-3000:]}')
  with open(out) as f:
    return json.load(f)


def run_openclip(peer_python: str, config, dtype: str, steps: int, folder: str) -> dict:
  """One OpenCLIP process on the towers and batch of our `config`: its row (examples/s, peak RSS)."""
  out = os.path.join(folder, 'openclip.json')
  precision = 'fp32' if dtype == 'float32' else 'amp_bf16'
  return _run_json([peer_python, '-m', 'benchmarks.openclip_step',
                    '--model_json', json.dumps(openclip_model_config(config)),
                    '--batch', str(config.batch_size), '--steps', str(steps),
                    '--precision', precision, '--out', out], out)


def run_ours(config: str, dtype: str, steps: int, smoke: bool, folder: str) -> dict:
  """One process of our train step: its row (examples/s, matmul peak, peak RSS)."""
  out = os.path.join(folder, 'ours.json')
  command = [sys.executable, '-m', 'benchmarks.train_throughput', '--config', config, '--steps',
             str(steps), '--set', f'model.dtype={dtype}', '--out', out]
  return _run_json(command + (['--smoke'] if smoke else []), out)['results'][0]


def compare(config: str, dtype: str, rounds: int, steps: int, peer_python: str | None,
            smoke: bool) -> list[dict]:
  """A B A B ...: one row per process, with FLOP/s as a fraction of that round's matmul peak."""
  ours_config = bench_config(config, smoke, [])  # what train_throughput runs, smoke sizes included
  flops = model_flops_per_step(ours_config)
  rows = []
  for round_index in range(rounds):
    with tempfile.TemporaryDirectory() as folder:
      peer = (run_openclip(peer_python, ours_config, dtype, steps, folder)
              if peer_python else None)
      ours = run_ours(config, dtype, steps, smoke, folder)
    peak = ours['matmul_peak_gflop_s'] * 1e9
    sides = [('OpenCLIP', peer)] if peer else []
    for name, row in sides + [('ours', ours)]:
      per_s = row['examples_per_s']
      rows.append({'round': round_index + 1, 'impl': name, 'config': config, 'dtype': dtype,
                   'batch': row['batch'], 'examples_per_s': per_s,
                   'ratio_vs_openclip': round(per_s / peer['examples_per_s'], 3) if peer else '-',
                   'model_gflop_s': round(flops * per_s / row['batch'] / 1e9, 1),
                   'fraction_of_peak': round(flops * per_s / row['batch'] / peak, 3),
                   'peak_rss_gb': row['peak_rss_gb'], 'kernel_s_per_step': row['kernel_s_per_step'],
                   'glibc_tunables': row['glibc_tunables']})
  return rows


def main(argv: list[str]) -> int:
  """Command-line entry point."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', choices=CONFIGS, required=True)
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32')
  parser.add_argument('--rounds', type=int, default=2, help='A B rounds (fresh processes)')
  parser.add_argument('--steps', type=int, default=5, help='timed steps per process')
  parser.add_argument('--peer_python', default=None,
                      help='python of the peers environment (benchmarks/requirements-peers.txt)')
  parser.add_argument('--smoke', action='store_true', help='tiny sizes, for CI')
  parser.add_argument('--out', default=None)
  args = parser.parse_args(argv)
  rows = compare(args.config, args.dtype, args.rounds, args.steps, args.peer_python, args.smoke)
  print_table(rows, list(rows[0]))
  out = args.out or f'benchmarks/results/vs_openclip_{args.config}_{args.dtype}.json'
  write_json(out, {'results': rows,
                   'model_flops_per_step': model_flops_per_step(bench_config(args.config, False, []))})
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))

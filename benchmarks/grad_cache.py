"""Gradient caching: the demo model at a global batch 16x the batch its towers run on.

  python -m benchmarks.grad_cache [--micro 128] [--accum 16] [--steps 3] [--smoke]

Three fresh processes of `benchmarks.train_throughput --config demo` (one CPU device, synthetic
batches): the micro-batch alone, the 16x batch with accum_steps=16, and the 16x batch in one piece.
Prints seconds per step, examples/s, peak RSS and XLA's temporary bytes for each, and writes JSON.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

from benchmarks.common import ROOT, child_env, print_table, write_json


def measure(batch: int, accum: int, steps: int, smoke: bool) -> dict:
  """One train_throughput run in a fresh process (its own peak RSS)."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'row.json')
    cmd = [sys.executable, '-m', 'benchmarks.train_throughput', '--config', 'demo',
           '--steps', str(steps), '--out', out, '--set', f'batch_size={batch}',
           '--set', f'accum_steps={accum}'] + (['--smoke'] if smoke else [])
    result = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True)
    if result.returncode != 0:
      return {'batch': batch, 'accum_steps': accum,
              'status': f'failed: {(result.stderr.strip().splitlines() or ["killed"])[-1]}'}
    with open(out) as f:
      row = json.load(f)['results'][0]
  keep = ('batch', 'accum_steps', 'step_s', 'examples_per_s', 'peak_rss_gb', 'xla_temp_gb')
  return {'micro_batch': batch // accum, **{k: row[k] for k in keep}, 'status': 'ok'}


def main(argv: list[str]) -> int:
  """Runs the three points and writes the table as JSON."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--micro', type=int, default=128)
  parser.add_argument('--accum', type=int, default=16)
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--smoke', action='store_true', help='CI sizes: micro 8, accum 2, 1 step')
  parser.add_argument('--out', default='benchmarks/results/grad_cache.json')
  args = parser.parse_args(argv)
  if args.smoke:
    args.micro, args.accum, args.steps = 8, 2, 1
  big = args.micro * args.accum
  rows = [measure(args.micro, 1, args.steps, args.smoke),
          measure(big, args.accum, args.steps, args.smoke)]
  if not args.smoke:  # the same code path as the first row, only bigger
    rows.append(measure(big, 1, args.steps, args.smoke))
  print_table(rows, ['batch', 'accum_steps', 'micro_batch', 'status', 'step_s', 'examples_per_s',
                     'peak_rss_gb', 'xla_temp_gb'])
  write_json(args.out, {'config': 'configs/demo.py', 'devices': 1, 'results': rows})
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))

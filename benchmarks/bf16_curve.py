"""The demo trained in fp32 and in bf16 compute: loss curves side by side, and the final zero-shot.

  python -m benchmarks.bf16_curve [--log_every 5] [--tolerance 0.05] [--smoke] [--out FILE]

Two fresh `pretrain.train` runs of configs/demo.py (one CPU device, same seed and data order), one
with `model.dtype=float32`, one with `model.dtype=bfloat16` (fp32 master weights and optimizer).
Prints the training loss of both at every logged step, its mean over windows of `--window` steps,
the zero-shot accuracy each run's final eval reports, and whether every window's |bf16 - fp32|
is within `--tolerance` (absolute, in nats; the demo's loss falls from ln(128) = 4.85 to about
2). Windows, because a single step's loss is one batch's: the two runs' rounding differs from the
first step, so their per-step losses wander apart by about as much as consecutive steps differ.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

from benchmarks.common import ROOT, child_env, print_table, write_json


def train(workdir: str, dtype: str, log_every: int, smoke: bool) -> tuple[dict, float | None]:
  """One demo run; -> ({step: loss}, zero-shot acc1 of its final eval or None)."""
  overrides = [f'model.dtype={dtype}', f'log_every={log_every}']
  if smoke:  # CI: the same path on a few steps, no final eval.
    overrides += ['total_steps=4', 'optim.warmup_steps=1', 'eval.zeroshot=']
  cmd = [sys.executable, '-m', 'pretrain.train', '--config', 'configs/demo.py', '--workdir',
         workdir, *(f'--config.{item}' for item in overrides)]
  result = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True)
  if result.returncode != 0:
    last_line = (result.stderr.strip().splitlines() or ['killed'])[-1]
    raise SystemExit(f'{dtype} run failed: {last_line}')
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    losses = {row['step']: row['loss'] for row in map(json.loads, f) if 'loss' in row}
  found = re.search(r'zero-shot \S+: acc1 ([0-9.]+)', result.stdout)
  acc1 = float(found.group(1)) if found else None
  return losses, acc1


def window_means(rows: list[dict], window: int) -> list[dict]:
  """Mean fp32 and bf16 loss over consecutive windows of `window` steps."""
  groups = {}
  for row in rows:
    groups.setdefault((row['step'] - 1) // window, []).append(row)
  out = []
  for index, group in sorted(groups.items()):
    fp32 = sum(r['loss_fp32'] for r in group) / len(group)
    bf16 = sum(r['loss_bf16'] for r in group) / len(group)
    out.append({'steps': f'{index * window + 1}-{(index + 1) * window}',
                'loss_fp32': round(fp32, 4), 'loss_bf16': round(bf16, 4),
                'diff': round(bf16 - fp32, 4)})
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--log_every', type=int, default=5)
  parser.add_argument('--window', type=int, default=25, help='steps per averaged window')
  parser.add_argument('--tolerance', type=float, default=0.05,
                      help='largest |bf16 - fp32| of a window\'s mean training loss')
  parser.add_argument('--smoke', action='store_true', help='4 steps, no eval, for CI')
  parser.add_argument('--out', default=os.path.join(ROOT, 'benchmarks/results/bf16_curve.json'))
  args = parser.parse_args()
  log_every = 1 if args.smoke else args.log_every
  runs = {}
  with tempfile.TemporaryDirectory() as tmp:
    for dtype in ('float32', 'bfloat16'):
      runs[dtype] = train(os.path.join(tmp, dtype), dtype, log_every, args.smoke)
  (fp32, fp32_acc), (bf16, bf16_acc) = runs['float32'], runs['bfloat16']
  rows = [{'step': step, 'loss_fp32': round(fp32[step], 4), 'loss_bf16': round(bf16[step], 4),
           'diff': round(bf16[step] - fp32[step], 4)} for step in sorted(fp32) if step in bf16]
  print_table(rows, ['step', 'loss_fp32', 'loss_bf16', 'diff'])
  windows = window_means(rows, 1 if args.smoke else args.window)
  print_table(windows, ['steps', 'loss_fp32', 'loss_bf16', 'diff'])
  worst = max(abs(row['diff']) for row in windows)
  summary = {'max_abs_window_diff': worst, 'tolerance': args.tolerance,
             'within_tolerance': worst <= args.tolerance,
             'max_abs_step_diff': max(abs(row['diff']) for row in rows),
             'zeroshot_acc1_fp32': fp32_acc, 'zeroshot_acc1_bf16': bf16_acc}
  print(json.dumps(summary))
  write_json(args.out, {'results': rows, 'windows': windows, 'summary': summary})


if __name__ == '__main__':
  main()

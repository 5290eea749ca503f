"""Kill training at random moments, restart the same command, and compare with an uninterrupted run.

  python -m benchmarks.crash_resume [--kills 20] [--seed 0] [--total_steps 200] [--out FILE]

Each life of the trainer makes 1-12 steps of progress; then half the kills wait for a checkpoint
write to be in progress (orbax's temporary folder present) and the others land within 0.2 s. Afterwards the final parameters and
optimizer state must be bit-identical to an uninterrupted run, and every checkpoint left readable.
"""

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from benchmarks.common import ROOT, child_env, print_table, write_json
from pretrain.runtime.checkpoint import complete_steps



def trainer_cmd(workdir: str, total_steps: int) -> list[str]:
  """The demo config, shrunk so a step takes tens of milliseconds; frequent checkpoints."""
  return [sys.executable, '-m', 'pretrain.train', '--config', 'configs/demo.py', '--workdir',
          workdir, '--config.model.image_size=16', '--config.model.context_length=12',
          '--config.batch_size=16', '--config.optim.warmup_steps=5', '--config.log_every=1',
          f'--config.total_steps={total_steps}', '--config.checkpoint_every=3',
          '--config.keep_checkpoints=3', '--config.eval.zeroshot=']


def _rows(workdir: str) -> int:
  try:
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      return sum(1 for _ in f)
  except FileNotFoundError:
    return 0


def _writing(workdir: str) -> bool:
  folder = os.path.join(workdir, 'checkpoints')
  return os.path.isdir(folder) and any('tmp' in name for name in os.listdir(folder))


def kill_once(workdir: str, total_steps: int, rng: random.Random, log) -> str:
  """Starts the trainer and SIGKILLs it; returns 'finished', 'during_write' or 'random'."""
  # Let this life make 1-12 steps of progress (rows of metrics.jsonl), so kills are spread over
  # the run and most restarts resume from a checkpoint rather than from scratch.
  target = _rows(workdir) + rng.randint(1, 12)
  proc = subprocess.Popen(trainer_cmd(workdir, total_steps), cwd=ROOT, env=child_env(),
                          stdout=log, stderr=subprocess.STDOUT)
  while _rows(workdir) < target:
    if proc.poll() is not None:
      return 'finished' if proc.returncode == 0 else f'failed ({proc.returncode})'
    time.sleep(0.002)
  mode = 'during_write' if rng.random() < 0.5 else 'random'
  deadline = time.time() + (5.0 if mode == 'during_write' else rng.uniform(0.0, 0.2))
  while time.time() < deadline and proc.poll() is None:
    if mode == 'during_write' and _writing(workdir):
      break
    time.sleep(0.001)
  if mode == 'during_write' and not _writing(workdir):
    mode = 'random'  # no write caught in time
  if proc.poll() is not None:
    return 'finished' if proc.returncode == 0 else f'failed ({proc.returncode})'
  proc.kill()
  proc.wait()
  return mode


def read_checkpoint(workdir: str, step: int) -> dict:
  """params + opt_state of a checkpoint as numpy (restored on one CPU device)."""
  path = os.path.join(workdir, 'checkpoints', str(step))
  out = {}
  for item in ('params', 'opt_state'):
    tree = ocp.StandardCheckpointer().restore(os.path.join(path, item))
    out[item] = jax.tree.map(np.asarray, tree)
  return out


def run(kills: int, seed: int, total_steps: int, root: str) -> dict:
  """The whole experiment; returns the result row."""
  rng = random.Random(seed)
  reference, crashed = os.path.join(root, 'reference'), os.path.join(root, 'crashed')
  with open(os.path.join(root, 'reference.log'), 'w') as log:
    assert subprocess.run(trainer_cmd(reference, total_steps), cwd=ROOT, env=child_env(),
                          stdout=log, stderr=subprocess.STDOUT).returncode == 0
  outcomes = []
  start = time.time()
  with open(os.path.join(root, 'crashed.log'), 'w') as log:
    while len([o for o in outcomes if o in ('random', 'during_write')]) < kills:
      outcome = kill_once(crashed, total_steps, rng, log)
      outcomes.append(outcome)
      if outcome == 'finished' or outcome.startswith('failed'):
        break
    final = subprocess.run(trainer_cmd(crashed, total_steps), cwd=ROOT, env=child_env(),
                           stdout=log, stderr=subprocess.STDOUT)
  with open(os.path.join(root, 'crashed.log')) as f:
    resumes = f.read().count('resumed from')
  a, b = read_checkpoint(reference, total_steps), read_checkpoint(crashed, total_steps)
  identical = all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))
  steps = complete_steps(crashed)
  unreadable = 0
  for step in steps:
    try:
      read_checkpoint(crashed, step)
    except Exception:  # any failure to read counts
      unreadable += 1
  done = [o for o in outcomes if o in ('random', 'during_write')]
  return {'kills': len(done), 'during_write': outcomes.count('during_write'),
          'resumed': resumes, 'completed': final.returncode == 0,
          'bit_identical': identical, 'checkpoints_left': len(steps),
          'unreadable': unreadable, 'failed_starts': sum(o.startswith('failed') for o in outcomes),
          'wall_s': round(time.time() - start, 1)}


def main(argv: list[str]) -> int:
  """Command-line entry point."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--kills', type=int, default=20)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--total_steps', type=int, default=200)
  parser.add_argument('--out', default='benchmarks/results/crash_resume.json')
  parser.add_argument('--keep', default=None, help='folder for the runs (default: a temp dir)')
  args = parser.parse_args(argv)
  root = args.keep or tempfile.mkdtemp()
  os.makedirs(root, exist_ok=True)
  row = run(args.kills, args.seed, args.total_steps, root)
  print_table([row], list(row))
  write_json(args.out, {'results': [row], 'runs': root})
  return 0 if row['bit_identical'] and row['completed'] and not row['unreadable'] else 1


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))

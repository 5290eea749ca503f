"""Two builds of the project, timed in alternating rounds on the same machine.

  python -m benchmarks.ab_rounds --before DIR --after DIR --config tiny [--rounds 2] [--steps 5]

Each round runs `benchmarks.train_throughput` in a fresh process of the BEFORE checkout, then of the
AFTER one (each with its own code on PYTHONPATH, the same interpreter), so drifts of the machine
between rounds (CPU timings move ~10% here) hit both builds alike. Prints one row per run and the
ratio after/before per round, and writes JSON to benchmarks/results/ab_<config>.json.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from benchmarks.common import ROOT, child_env, print_table, write_json

KEPT = ('examples_per_s', 'step_s', 'fraction_of_peak', 'peak_rss_gb', 'xla_temp_gb',
        'kernel_s_per_step')


def run_build(checkout: str, config: str, steps: int) -> dict:
  """One train_throughput run of `checkout` in a fresh process; its result row."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'row.json')
    env = dict(child_env(), PYTHONPATH=os.path.abspath(checkout))
    subprocess.run([sys.executable, '-m', 'benchmarks.train_throughput', '--config', config,
                    '--steps', str(steps), '--out', out], cwd=checkout, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    with open(out) as f:
      return json.load(f)['results'][0]


def main(argv: list[str]) -> int:
  """Command-line entry point."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--before', required=True, help='checkout of the earlier build')
  parser.add_argument('--after', default=ROOT, help='checkout of the later build (default: this)')
  parser.add_argument('--config', default='tiny', help='a train_throughput config name')
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--steps', type=int, default=5, help='timed steps per run (median)')
  parser.add_argument('--out', default=None)
  args = parser.parse_args(argv)
  rows = []
  for round_index in range(1, args.rounds + 1):
    for build, checkout in (('before', args.before), ('after', args.after)):
      result = run_build(checkout, args.config, args.steps)
      rows.append({'round': round_index, 'build': build, **{k: result[k] for k in KEPT}})
      print_table(rows[-1:], list(rows[-1]))
  for row in rows:
    if row['build'] == 'after':
      before = next(r for r in rows if r['round'] == row['round'] and r['build'] == 'before')
      row['ratio_vs_before'] = round(row['examples_per_s'] / before['examples_per_s'], 3)
  print_table(rows, list(rows[0]) + ['ratio_vs_before'])
  ratios = [row['ratio_vs_before'] for row in rows if 'ratio_vs_before' in row]
  print(f'after/before examples/s: median {statistics.median(ratios):.3f}, '
        f'range {min(ratios):.3f}-{max(ratios):.3f} over {len(ratios)} rounds')
  write_json(args.out or os.path.join(ROOT, f'benchmarks/results/ab_{args.config}.json'),
             {'config': args.config, 'before': os.path.abspath(args.before),
              'after': os.path.abspath(args.after), 'rows': rows})
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))

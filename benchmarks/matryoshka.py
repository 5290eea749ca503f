"""A Matryoshka run against a plain run of the same budget: zero-shot and retrieval at each prefix.

  python -m benchmarks.matryoshka [--dims 8,16,32,64] [--steps 200] [--smoke] [--out FILE]

Two fresh `pretrain.train` runs of configs/demo.py (embedding width 128, one CPU device, same seed,
data order and steps), one with `loss.matryoshka_dims=DIMS`, one plain. Both are then evaluated on
the embedded shapes corpus (shapes:zeroshot, shapes:retrieval) at every prefix of DIMS and the full
width; the plain run's embeddings are truncated and re-normalised the same way, as the baseline
(eval/prefixes.py).
"""

import argparse
import os
import subprocess
import sys
import tempfile

from benchmarks.common import ROOT, child_env, print_table, write_json

ZEROSHOT, RETRIEVAL = 'shapes:zeroshot', 'shapes:retrieval'
SHOWN = ('acc1', 'mean_per_class_recall', 'text_retrieval_recall@1', 'image_retrieval_recall@1',
         'image_retrieval_recall@5')


def train(workdir: str, dims: str, steps: int, smoke: bool) -> None:
  """One demo run, with Matryoshka prefixes `dims` ('' = plain)."""
  overrides = [f'total_steps={steps}', 'log_every=10', f'checkpoint_every={steps}',
               'eval.zeroshot=']
  if dims:
    overrides.append(f'loss.matryoshka_dims={dims},')
  if smoke:
    overrides += ['optim.warmup_steps=1', 'model.image_size=16', 'model.context_length=12',
                  'batch_size=16']
  cmd = [sys.executable, '-m', 'pretrain.train', '--config', 'configs/demo.py', '--workdir',
         workdir, *(f'--config.{item}' for item in overrides)]
  result = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True)
  if result.returncode != 0:
    last_line = (result.stderr.strip().splitlines() or ['killed'])[-1]
    raise SystemExit(f'{dims or "plain"} run failed: {last_line}')


def evaluate(workdir: str, widths: tuple[int, ...]) -> dict:
  """Zero-shot and retrieval metrics of the run's last checkpoint at every width."""
  from data.sources import open_source
  from eval.retrieval import evaluate_retrieval
  from eval.run_model import RunModel
  from eval.templates import load_templates
  from eval.zeroshot_lib import evaluate_zeroshot
  run = RunModel(workdir)
  _, embedder = run.embedder(None)
  model = run.config.model
  kwargs = dict(image_size=model.image_size, context_length=model.context_length, batch_size=256)
  zeroshot = open_source(ZEROSHOT, model.image_size, run.config.seed)
  retrieval = open_source(RETRIEVAL, model.image_size, run.config.seed)
  metrics = evaluate_zeroshot(embedder, run.tokenizer, zeroshot, load_templates('shapes'),
                              dims=widths, **kwargs)
  metrics.pop('confusion')
  metrics.update(evaluate_retrieval(embedder, run.tokenizer, retrieval, dims=widths, **kwargs))
  return metrics


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--dims', default='8,16,32,64', help='Matryoshka prefixes (demo width: 128)')
  parser.add_argument('--steps', type=int, default=200, help='training steps of each run')
  parser.add_argument('--smoke', action='store_true', help='2 steps of a 16 px model, for CI')
  parser.add_argument('--out', default=os.path.join(ROOT, 'benchmarks/results/matryoshka.json'))
  args = parser.parse_args()
  steps = 2 if args.smoke else args.steps
  widths = tuple(int(d) for d in args.dims.split(',')) + (128,)
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    for name, dims in (('matryoshka', args.dims), ('plain', '')):
      workdir = os.path.join(tmp, name)
      train(workdir, dims, steps, args.smoke)
      results[name] = evaluate(workdir, widths)
  rows = []
  for k in widths:
    suffix = '' if k == widths[-1] else f'@{k}'
    for metric in SHOWN:
      mrl, plain = results['matryoshka'][metric + suffix], results['plain'][metric + suffix]
      rows.append({'width': k, 'metric': metric, 'matryoshka': round(mrl, 4),
                   'plain': round(plain, 4), 'diff': round(mrl - plain, 4)})
  print_table(rows, ['width', 'metric', 'matryoshka', 'plain', 'diff'])
  write_json(args.out, {'dims': args.dims, 'steps': steps, 'config': 'configs/demo.py',
                        'results': rows, 'raw': results})


if __name__ == '__main__':
  main()

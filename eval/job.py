"""What every offline eval job shares: flags, which checkpoints to evaluate, and the outputs.

`--step N` evaluates that checkpoint, `--once` the newest, `--watch` follows the run: each complete
checkpoint exactly once, oldest first, results kept in RUN/eval so a restarted job with the same
settings skips finished steps, until the run's final step is done.
"""

import argparse
import json
import sys
import time
from typing import Callable

import jax
import numpy as np

from data import storage
from data.errors import ConfigError
from data.records import BadRecord
from pretrain.runtime.checkpoint import complete_steps, has_checkpoint
from pretrain.runtime.logger import EventUploader
from eval.provenance import settings_hash

Evaluate = Callable[[int | None], tuple[int, dict]]  # step (None: newest) -> (step, metrics)


def add_common_flags(parser: argparse.ArgumentParser, dataset_required: bool = True,
                     dataset: bool = True) -> None:
  """--workdir, --dataset (unless `dataset` is False; optional for a job with other ways to name
  its data, e.g. the linear probe's --train/--test), --step/--once/--watch, --batch_size,
  --poll_seconds."""
  parser.add_argument('--workdir', required=True,
                      help='the training run to evaluate (a folder or gs://BUCKET/PATH)')
  if dataset:
    parser.add_argument('--dataset', required=dataset_required,
                        help='data spec, e.g. shapes:zeroshot')
  which = parser.add_mutually_exclusive_group()
  which.add_argument('--step', type=int, default=None, help='evaluate this checkpoint')
  which.add_argument('--once', action='store_true', help='evaluate the newest checkpoint (default)')
  which.add_argument('--watch', action='store_true', help='follow the run until its final step')
  parser.add_argument('--batch_size', type=int, default=256)
  parser.add_argument('--poll_seconds', type=float, default=30.0, help='--watch polling period')


def dataset_name(source, spec: str) -> str:
  """A file-system-safe name for the dataset's output folder."""
  name = getattr(source, 'name', None) or spec
  # Stripping '.' too: a shard glob's name ('*.tar' -> '.tar') must not make a hidden folder.
  return ''.join(c if c.isalnum() or c in '-_.' else '_' for c in name).strip('_.')


class Outputs:
  """RUN/eval/<kind>/<dataset>-<hash>/step_<N>.json, TensorBoard scalars, one summary line.

  <hash> is eval.provenance.settings_hash of `settings` (what produced the numbers), so jobs with
  other class names, templates or data never share a folder; settings.json in the folder and
  every result file record the settings themselves, and `given`: the flags as typed (spec,
  file names), which the hash leaves out. Folders of older versions, named <dataset> alone, are
  left as they are and not read.
  """

  def __init__(self, workdir: str, kind: str, dataset: str, settings: dict,
               given: dict | None = None, folder: str | None = None):
    # folder: where the results go instead (the suite's one RUN/eval/suite/).
    self.kind, self.dataset, self.settings = kind, dataset, settings
    self.given, self.settings_hash = given or {}, settings_hash(settings)
    self.folder = folder or storage.join(workdir, 'eval', kind, f'{dataset}-{self.settings_hash}')
    self.is_main = jax.process_index() == 0
    if self.is_main:
      storage.makedirs(self.folder)
      _write_json(storage.join(self.folder, 'settings.json'),
                  {'settings_hash': self.settings_hash, 'given': self.given, **settings})
      records = settings.get('dataset', {}).get('records')
      size = f' ({records} samples)' if records is not None else ''
      print(f'{kind} {dataset}{size}: results in {self.folder}', flush=True)

  def path(self, step: int) -> str:
    """Where the metrics of `step` go."""
    return storage.join(self.folder, f'step_{step}.json')

  def done(self, step: int) -> bool:
    """Whether `step` was already evaluated with these settings (by this job or an earlier one)."""
    try:
      return json.loads(storage.read_text(self.path(step))).get('settings_hash') == \
          self.settings_hash
    except (OSError, ValueError):
      return False

  def write(self, step: int, metrics: dict, extras: dict[str, np.ndarray]) -> None:
    """Writes the JSON (atomically), arrays beside it, TB scalars, and prints the summary."""
    if not self.is_main:
      return
    for name, array in extras.items():
      storage.write_text(storage.join(self.folder, f'step_{step}_{name}.json'),
                         json.dumps(np.asarray(array).tolist()))
    _write_json(self.path(step), {'step': step, 'dataset': self.dataset, **metrics,
                                  'settings_hash': self.settings_hash, 'given': self.given,
                                  'settings': self.settings})
    self._write_scalars(step, metrics)
    shown = '  '.join(f'{k} {v:.4f}' for k, v in metrics.items()
                      if isinstance(v, float) and k != 'wall_s')
    print(f'{self.kind} {self.dataset} step {step}: {shown}  '
          f'({metrics.get("num_examples", "?")} examples, {metrics.get("wall_s", 0):.1f}s)',
          flush=True)


  def _write_scalars(self, step: int, metrics: dict) -> None:
    """One TensorBoard events file of the step's scalars in the results folder."""
    try:
      from tensorboardX import SummaryWriter
    except ImportError:
      return
    if not storage.is_bucket(self.folder):
      _add_scalars(SummaryWriter(self.folder), self, step, metrics)
      return
    # Written locally, then uploaded as the trainer's events are (a bucket has no append).
    uploader = EventUploader(self.folder)
    try:
      _add_scalars(SummaryWriter(uploader.local_dir), self, step, metrics)
      uploader.upload()
    finally:
      uploader.close()


def _add_scalars(writer, outputs: Outputs, step: int, metrics: dict) -> None:
  """The numeric metrics as `<kind>/<dataset>/<key>` scalars at `step`; closes the writer."""
  with writer as tb:
    for key, value in metrics.items():
      if isinstance(value, (int, float)):
        tb.add_scalar(f'{outputs.kind}/{outputs.dataset}/{key}', value, step)


def _write_json(path: str, obj: dict) -> None:
  """Atomically: a reader never sees half a file."""
  storage.write_text(path, json.dumps(obj, indent=2))


def final_step(workdir: str) -> int:
  """The run's total_steps, from its config.json."""
  return int(json.loads(storage.read_text(storage.join(workdir, 'config.json')))['total_steps'])


def watch(workdir: str, outputs: Outputs, evaluate: Evaluate, poll_seconds: float,
          max_polls: int | None = None) -> list[int]:
  """Evaluates every new complete checkpoint once, oldest first, until the final step is done."""
  last, evaluated, polls = final_step(workdir), [], 0
  while True:
    for step in complete_steps(workdir):
      if outputs.done(step):
        continue
      try:
        evaluate(step)
        evaluated.append(step)
      except FileNotFoundError:
        if has_checkpoint(workdir, step):
          raise
        print(f'warning: checkpoint {step} was deleted (keep-N) before it was read; skipped',
              file=sys.stderr, flush=True)
    polls += 1  # The final checkpoint is the newest, so keep-N never deletes it before it is read.
    if outputs.done(last) or (max_polls is not None and polls >= max_polls):
      return evaluated
    time.sleep(poll_seconds)


def timed_evaluator(run, outputs: Outputs,
                    compute: Callable[[object], tuple[dict, dict]]) -> Evaluate:
  """Wraps `compute(embedder) -> (metrics, arrays)`: restore, time, write the outputs."""
  def evaluate(step):
    start = time.perf_counter()
    step, embedder = run.embedder(step)
    metrics, arrays = compute(embedder)
    metrics['wall_s'] = time.perf_counter() - start
    outputs.write(step, metrics, arrays)
    return step, metrics
  return evaluate


def run_job(args: argparse.Namespace, outputs: Outputs, evaluate: Evaluate) -> None:
  """Dispatches --step / --once / --watch."""
  if args.watch:
    watch(args.workdir, outputs, evaluate, args.poll_seconds)
  else:
    evaluate(args.step)


def cli(parse: Callable[[list[str]], argparse.Namespace],
        make_job: Callable[[argparse.Namespace], tuple[Outputs, Evaluate]], argv: list[str]) -> int:
  """An eval job's command line: flags, job, run; a bad config, record or missing checkpoint is
  one line, exit 2."""
  try:
    args = parse(argv)
    run_job(args, *make_job(args))
  except (ConfigError, FileNotFoundError, BadRecord) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0



"""What a run has written, read for eval.report: metrics.jsonl rows, eval results, its config.

Everything goes through data/storage.py, so a bucket workdir reads like a folder. A run may still
be training: a missing file is an empty history, and a line half-written by the trainer (the last
one, while it appends) is skipped. A resumed run logs some steps again; the last row written for a
step wins, per metric.
"""

import dataclasses
import json
import re

from data import storage
from pretrain.config.identity import flat_fields

# metrics.jsonl keys that identify rather than measure, or duplicate another key.
NOT_PLOTTED = frozenset({'step', 'batch_crc32', 'skipped', 'logit_scale'})
# step_N.json keys that record provenance, not measurements.
EVAL_PROVENANCE = frozenset({'step', 'dataset', 'settings_hash', 'given', 'settings'})
STEP_FILE = re.compile(r'^step_(\d+)\.json$')

Series = dict[int, float]  # step -> value


@dataclasses.dataclass
class Run:
  """One run's curves: training metrics and eval metrics, each name -> {step: value}."""

  path: str
  label: str
  train: dict[str, Series]
  evals: dict[str, Series]  # '<group>/<metric>'; the group names where it came from
  config: dict
  skipped_lines: int = 0


def _number(value) -> float | None:
  """A plottable number, or None (booleans, strings and lists are not)."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return None
  return float(value)


def read_rows(workdir: str) -> tuple[list[dict], int]:
  """The rows of WORKDIR/metrics.jsonl in file order, and how many lines could not be read."""
  path = storage.join(workdir, 'metrics.jsonl')
  if not storage.exists(path):
    return [], 0
  rows, bad = [], 0
  for line in storage.read_text(path, errors='replace').splitlines():
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except ValueError:  # a row being appended while we read
      bad += 1
      continue
    if isinstance(row, dict) and _number(row.get('step')) is not None:
      rows.append(row)
  return rows, bad


def split_rows(rows: list[dict]) -> tuple[dict[str, Series], dict[str, Series]]:
  """(training series, eval series) from metrics.jsonl rows; later rows overwrite earlier ones.

  Training rows carry a loss; other rows (the trainer's final zero-shot eval) and every key
  starting 'eval/' (in-training evals) are eval series, named 'metrics.jsonl:<key>'.
  """
  train: dict[str, Series] = {}
  evals: dict[str, Series] = {}
  for row in rows:
    step, is_train = int(row['step']), 'loss' in row
    for key, value in row.items():
      value = _number(value)
      if value is None or key in NOT_PLOTTED:
        continue
      if is_train and not key.startswith('eval/'):
        train.setdefault(key, {})[step] = value
      else:
        evals.setdefault(f'metrics.jsonl:{key}', {})[step] = value
  return train, evals


def flat_numbers(tree: dict, prefix: str = '') -> dict[str, float]:
  """The numeric leaves of a JSON object, nested keys joined by '.' ('/' separates the group)."""
  found = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      found.update(flat_numbers(value, f'{prefix}{key}.'))
    elif _number(value) is not None:
      found[prefix + key] = float(value)
  return found


def _listdir(path: str) -> list[str]:
  """Names in a folder; none if it does not exist (yet)."""
  try:
    return sorted(storage.listdir(path)) if storage.is_dir(path) else []
  except FileNotFoundError:
    return []


def read_eval_files(workdir: str) -> dict[str, Series]:
  """Every numeric key of every RUN/eval/<kind>/<folder>/step_N.json, as '<kind>/<folder>/<key>'.

  Kinds are found, not listed: a new eval job's results appear without a change here.
  """
  evals: dict[str, Series] = {}
  root = storage.join(workdir, 'eval')
  for kind in _listdir(root):
    for folder in _listdir(storage.join(root, kind)):
      where = storage.join(root, kind, folder)
      for name in _listdir(where):
        match = STEP_FILE.match(name)
        if not match:
          continue
        try:
          result = json.loads(storage.read_text(storage.join(where, name)))
        except (OSError, ValueError):  # removed or being replaced while we list
          continue
        step = int(result.get('step', match.group(1)))
        measured = {k: v for k, v in result.items() if k not in EVAL_PROVENANCE}
        for key, value in flat_numbers(measured).items():
          evals.setdefault(f'{kind}/{folder}/{key}', {})[step] = value
  return evals


def flat_config(tree: dict) -> dict[str, str]:
  """config.json as dotted field -> value written as JSON (lists and numbers comparable)."""
  return {name: json.dumps(value) for name, value in flat_fields(tree).items()}


def read_config(workdir: str) -> dict:
  """The run's config.json, or {} before the trainer wrote it."""
  path = storage.join(workdir, 'config.json')
  try:
    return json.loads(storage.read_text(path)) if storage.exists(path) else {}
  except ValueError:
    return {}


def labels_for(paths: list[str]) -> list[str]:
  """Short legend labels: each workdir's last path part, the whole path where those repeat."""
  names = [storage.basename(p.rstrip('/')) or p for p in paths]
  return [n if names.count(n) == 1 else p for n, p in zip(names, paths)]


def read_run(workdir: str, label: str) -> Run:
  """Everything eval.report draws from one workdir (whatever exists so far)."""
  rows, bad = read_rows(workdir)
  train, evals = split_rows(rows)
  evals.update(read_eval_files(workdir))
  return Run(workdir, label, train, evals, read_config(workdir), bad)


def config_differences(runs: list[Run]) -> list[tuple[str, list[str]]]:
  """(field, the value in each run) for the config fields that differ between the runs."""
  flats = [flat_config(run.config) for run in runs]
  names = sorted(set().union(*flats)) if flats else []
  rows = []
  for name in names:
    values = [flat.get(name, '—') for flat in flats]
    if len(set(values)) > 1:
      rows.append((name, values))
  return rows


def last_point(series: Series) -> tuple[int, float] | None:
  """(step, value) of the latest step, or None for an empty series."""
  if not series:
    return None
  step = max(series)
  return step, series[step]

"""Evaluation at Matryoshka prefixes: `--dims 32,64,full`, truncation, per-prefix metric names.

A job embeds once at full width, then scores each prefix k on the first k dimensions of every
embedding re-normalised to unit length (what pretrain/losses/matryoshka.py trains). Metrics of the
full width keep their plain names (`acc1`); those of a prefix get `@k` (`acc1@64`).
"""

import argparse
from typing import Callable, Sequence

import numpy as np

from data.errors import ConfigError
from eval.search_lib import prefix
from pretrain.losses.matryoshka import prefix_widths
from pretrain.models.variants import model_size


def add_dims_flag(parser: argparse.ArgumentParser) -> None:
  """--dims: the embedding prefixes to evaluate."""
  parser.add_argument('--dims', default=None,
                      help="embedding prefixes to evaluate, e.g. 32,64,full (default: the run's "
                           'loss.matryoshka_dims and full, else full only); full is always added')


def parse_dims(arg: str | None, run_config) -> tuple[int, ...]:
  """Ascending prefix widths from `--dims` (or the run's Matryoshka dims), the full width last."""
  width = int(model_size(run_config.model)['embed_dim'])
  if arg is None:
    return prefix_widths(run_config.loss.get('matryoshka_dims', ()), width)
  dims = set()
  for part in arg.split(','):
    part = part.strip()
    if part == 'full':
      dims.add(width)
      continue
    if not part.isdigit() or not 1 <= int(part) <= width:
      raise ConfigError(f'--dims {arg}: {part!r} is not a width from 1 to the embedding width '
                        f'{width} or "full"')
    dims.add(int(part))
  return prefix_widths(sorted(dims), width)


def truncate(x: np.ndarray, k: int) -> np.ndarray:
  """The first k dimensions of unit rows, re-normalised; the full width is `x` itself."""
  return prefix(x, k)


def metrics_at_prefixes(widths: Sequence[int], compute: Callable[[int], dict]) -> dict:
  """compute(k) for each width; the last (full) width's metrics as they are, the others' float
  metrics as `<name>@k` (counts and arrays belong to the full width only)."""
  full = widths[-1]
  metrics = dict(compute(full))
  for k in widths[:-1]:
    metrics.update({f'{name}@{k}': value for name, value in compute(k).items()
                    if isinstance(value, float)})
  return metrics


def with_prefixes(settings: dict, widths: Sequence[int]) -> dict:
  """Eval settings with the prefixes when there are several: a job with other --dims writes
  other keys, so it gets its own results folder; full-width-only jobs keep their old hash."""
  if len(widths) == 1:
    return settings
  return {**settings, 'embedding_prefixes': [int(k) for k in widths]}

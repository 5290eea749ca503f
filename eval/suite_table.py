"""The suite's results as one table: a row per dataset, CLIP_benchmark's metric names as columns
(and, for a run evaluated at Matryoshka prefixes, `<metric>@K` beside each), and the average over
the suite (each metric over the datasets that have it)."""

import csv
import io

CLASSIFICATION_METRICS = ('acc1', 'acc5', 'mean_per_class_recall')
RETRIEVAL_METRICS = tuple(f'{kind}_retrieval_recall@{k}' for kind in ('image', 'text')
                          for k in (1, 5, 10))
COLUMNS = ('dataset', 'task', 'num_examples', *CLASSIFICATION_METRICS, *RETRIEVAL_METRICS)
METRICS = CLASSIFICATION_METRICS + RETRIEVAL_METRICS


def metric_keys(results: dict[str, dict]) -> list[str]:
  """METRICS in order, each followed by its prefix variants `<metric>@K` found in `results`."""
  found = {key for r in results.values() for key in r}
  widths = sorted({int(key.rsplit('@', 1)[1]) for key in found for m in METRICS
                   if key.startswith(m + '@') and key.count('@') == m.count('@') + 1})
  return [key for m in METRICS for key in (m, *(f'{m}@{k}' for k in widths)) if key in found]


def columns(results: dict[str, dict]) -> tuple[str, ...]:
  """The table's columns for `results`."""
  return ('dataset', 'task', 'num_examples', *metric_keys(results))


def average(results: dict[str, dict]) -> tuple[dict[str, float], dict[str, int]]:
  """(mean of each metric over the datasets that report it, how many datasets that is)."""
  means, counts = {}, {}
  for key in metric_keys(results):
    values = [r[key] for r in results.values() if key in r]
    if values:
      means[key], counts[key] = sum(values) / len(values), len(values)
  return means, counts


def rows(results: dict[str, dict]) -> list[dict]:
  """One dict per dataset, then the average row; missing metrics are absent."""
  out = [{'dataset': name, **r} for name, r in results.items()]
  means, _ = average(results)
  out.append({'dataset': 'average', 'task': '',
              'num_examples': sum(r.get('num_examples', 0) for r in results.values()), **means})
  return out


def _cell(value) -> str:
  return f'{value:.4f}' if isinstance(value, float) else str(value)


def to_csv(results: dict[str, dict]) -> str:
  """The table as CSV: full-precision numbers, empty cells for metrics a task lacks."""
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=columns(results) if results else COLUMNS,
                          extrasaction='ignore', lineterminator='\n')
  writer.writeheader()
  for row in rows(results):
    writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
  return buffer.getvalue()


def to_markdown(results: dict[str, dict], step: int) -> str:
  """The table as markdown (4 decimals; only the columns some dataset has)."""
  table = rows(results)
  shown = [c for c in columns(results) if any(c in row for row in table)]
  lines = [f'Evaluation suite, step {step}', '',
           '| ' + ' | '.join(shown) + ' |', '|' + '---|' * len(shown)]
  for row in table:
    lines.append('| ' + ' | '.join(_cell(row.get(c, '')) for c in shown) + ' |')
  return '\n'.join(lines) + '\n'

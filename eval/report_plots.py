"""The figures of eval.report: which curves go on which figure, drawn to PNG with matplotlib (Agg).

A figure is a row of panels; a panel overlays one or more metrics of every run (colour: the run,
line style: the metric). Panels without data in any run are left out, and figures left without
panels too, so a run still compiling or without eval draws what it has.
"""

import dataclasses
import io
import math
import re

import matplotlib

matplotlib.use('Agg')  # no display, no server: PNG bytes only
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.ticker import MaxNLocator  # noqa: E402

from eval.report_data import Run, Series  # noqa: E402

STYLES = ('-', '--', ':', '-.')
MAX_MARKED_POINTS = 60  # curves with fewer points show each one (a single eval step is a dot)


@dataclasses.dataclass
class Panel:
  """One axes: a title and the metric names it overlays (a trailing '*' matches a prefix)."""

  title: str
  keys: tuple[str, ...]
  log_y: bool = False


@dataclasses.dataclass
class Figure:
  """One PNG: an id (file name and HTML anchor), a title and its panels."""

  id: str
  title: str
  panels: list[Panel]
  source: str = 'train'  # which of Run.train / Run.evals the keys name


TRAIN_FIGURES = (
    Figure('loss', 'Training loss', [Panel('loss', ('loss',))]),
    Figure('temperature', 'Temperature',
           [Panel('temperature', ('temperature',)), Panel('SigLIP bias', ('logit_bias',))]),
    Figure('lr', 'Learning rate', [Panel('learning rate', ('lr',))]),
    Figure('accuracy', 'In-batch accuracies',
           [Panel('in-batch accuracy', ('acc_i2t', 'acc_t2i'))]),
    Figure('grad_norm', 'Gradient norm', [Panel('gradient norm', ('grad_norm',), log_y=True)]),
    Figure('throughput', 'Examples per second', [Panel('examples/s', ('examples_per_s',))]),
    Figure('skips', 'Skipped updates and bad records',
           [Panel('non-finite updates skipped (total)', ('skipped_updates',)),
            Panel('bad records skipped (total)', ('bad_records', 'bad_records/*'))]),
)


def slug(text: str) -> str:
  """A file-name and HTML-id safe form of `text`."""
  return re.sub(r'[^A-Za-z0-9_.-]+', '_', text).strip('_')


def eval_figures(runs: list[Run]) -> list[Figure]:
  """One figure per eval group ('<kind>/<dataset>-<hash>' or a metrics.jsonl prefix), one panel
  per metric found in any run."""
  groups: dict[str, set[str]] = {}
  for run in runs:
    for name in run.evals:
      group, _, metric = name.rpartition('/')
      groups.setdefault(group, set()).add(metric)
  return [Figure('eval-' + slug(group), group,
                 [Panel(metric, (f'{group}/{metric}',)) for metric in sorted(metrics)], 'evals')
          for group, metrics in sorted(groups.items())]


def _matching(series: dict[str, Series], pattern: str) -> list[str]:
  """The metric names `pattern` names (exactly, or by prefix for 'name/*')."""
  if pattern.endswith('*'):
    return sorted(k for k in series if k.startswith(pattern[:-1]))
  return [pattern] if pattern in series else []


def curves(panel: Panel, runs: list[Run], source: str) -> list[tuple[int, str, Series, str]]:
  """(run index, metric name, series, legend label) of everything `panel` draws."""
  found = []
  for index, run in enumerate(runs):
    series = getattr(run, source)
    for pattern in panel.keys:
      found += [(index, key, series[key]) for key in _matching(series, pattern) if series[key]]
  several_keys = len({key for _, key, _ in found}) > 1
  drawn = []
  for index, key, series in found:
    parts = [runs[index].label] if len(runs) > 1 else []
    parts += [key] if several_keys else []
    drawn.append((index, key, series, ' '.join(parts) or runs[index].label))
  return drawn


def with_data(figure: Figure, runs: list[Run]) -> Figure | None:
  """`figure` without its empty panels; None when none is left."""
  panels = [p for p in figure.panels if curves(p, runs, figure.source)]
  return dataclasses.replace(figure, panels=panels) if panels else None


def draw(figure: Figure, runs: list[Run]) -> tuple[bytes, list[str]]:
  """The figure as PNG bytes, and the legend labels it shows."""
  columns = min(3, len(figure.panels))
  rows = math.ceil(len(figure.panels) / columns)
  fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.3 * rows), squeeze=False)
  colours = plt.rcParams['axes.prop_cycle'].by_key()['color']
  labels: list[str] = []
  try:
    for ax, panel in zip(axes.flat, figure.panels):
      keys: list[str] = []
      for run_index, key, series, label in curves(panel, runs, figure.source):
        keys += [key] if key not in keys else []
        steps = sorted(series)
        ax.plot(steps, [series[s] for s in steps], label=label,
                color=colours[run_index % len(colours)],
                linestyle=STYLES[keys.index(key) % len(STYLES)],
                marker='o' if len(steps) <= MAX_MARKED_POINTS else None, markersize=3)
        labels.append(label)
      ax.set_title(panel.title, fontsize=10)
      ax.set_xlabel('step')
      ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps, not 2.5
      steps_drawn = {x for line in ax.get_lines() for x in line.get_xdata()}
      if len(steps_drawn) == 1:  # one eval so far: one tick at its step
        ax.set_xticks(sorted(steps_drawn))
      ax.grid(True, alpha=0.3)
      if panel.log_y and all(v > 0 for line in ax.get_lines() for v in line.get_ydata()):
        ax.set_yscale('log')
      ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(figure.panels):]:
      ax.set_visible(False)
    fig.suptitle(figure.title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=90)
  finally:
    plt.close(fig)
  return buffer.getvalue(), list(dict.fromkeys(labels))

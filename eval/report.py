"""One HTML page (and its PNGs) showing one run, or several overlaid.

  python -m eval.report RUN [RUN ...] [--out DIR]

Draws what each run has written so far (a run still training or without eval works): training
loss, temperature (and SigLIP bias), learning rate, in-batch accuracies, gradient norm, examples/s,
skipped updates and bad records from RUN/metrics.jsonl; every numeric metric of every
RUN/eval/<kind>/<dataset>-<hash>/step_N.json and every eval row of metrics.jsonl; the config fields
that differ between the runs; the final figures. The page is self-contained (images embedded as
base64), readable offline or attached to a message. RUN and DIR may be gs:// or s3:// paths.
Default DIR: RUN/report for one run, ./report for several.
"""

import argparse
import base64
import html
import sys

from data import storage
from data.errors import ConfigError
from eval.report_data import Run, config_differences, labels_for, last_point, read_run
from eval.report_plots import TRAIN_FIGURES, Figure, draw, eval_figures, with_data

PAGE = 'index.html'
# Training metrics in the summary table, in this order (those a run has).
SUMMARY_KEYS = ('loss', 'acc_i2t', 'acc_t2i', 'temperature', 'logit_bias', 'lr', 'grad_norm',
                'examples_per_s', 'skipped_updates', 'bad_records')
STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.num { text-align: right; font-family: monospace; }
div.figures { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
figure { margin: 0.5em 0; }
figure img { max-width: 100%; }
.note { color: #666; }
"""


def parse(argv: list[str]) -> argparse.Namespace:
  """The command line."""
  parser = argparse.ArgumentParser(prog='python -m eval.report', description=__doc__.split('\n')[0])
  parser.add_argument('runs', nargs='+', metavar='RUN', help='workdirs (folders or gs://, s3://)')
  parser.add_argument('--out', default=None,
                      help='output folder (default: RUN/report for one run, ./report for several)')
  return parser.parse_args(argv)


def default_out(runs: list[str]) -> str:
  """RUN/report beside one run's files; ./report for a comparison, which belongs to no run."""
  return storage.join(runs[0], 'report') if len(runs) == 1 else 'report'


def read_runs(paths: list[str]) -> list[Run]:
  """The runs, each checked to be a workdir (a typo is one line, not an empty page)."""
  runs = []
  for path, label in zip(paths, labels_for(paths)):
    if not storage.is_dir(path):
      raise ConfigError(f'{path} is not a folder: expected a training run\'s --workdir')
    run = read_run(path, label)
    if not (run.train or run.evals or run.config):
      raise ConfigError(f'{path} has no metrics.jsonl, eval results or config.json: is it a '
                        'training run\'s --workdir?')
    runs.append(run)
  return runs


def fmt(value: float) -> str:
  """A number for a table: integers as such, others with 4 significant digits."""
  if float(value).is_integer() and abs(value) < 1e15:
    return str(int(value))
  return f'{value:.4g}'


def summary_rows(runs: list[Run]) -> list[tuple[str, list[str]]]:
  """(metric, 'value (step N)' per run) for the final training and eval figures."""
  rows = [('last logged step', [fmt(max(r.train['loss'])) if r.train.get('loss') else '—'
                                for r in runs])]
  names = [('train', k) for k in SUMMARY_KEYS if any(k in r.train for r in runs)]
  names += [('evals', k) for k in sorted(set().union(*(r.evals for r in runs)))]
  for source, key in names:
    cells = []
    for run in runs:
      point = last_point(getattr(run, source).get(key, {}))
      cells.append('—' if point is None else f'{fmt(point[1])} (step {point[0]})')
    rows.append((key, cells))
  return rows


def table(header: list[str], rows: list[tuple[str, list[str]]], table_id: str) -> str:
  """An HTML table: a name column, then one column per run."""
  head = ''.join(f'<th>{html.escape(h)}</th>' for h in header)
  body = ''.join(
      '<tr><td>' + html.escape(name) + '</td>'
      + ''.join(f'<td class="num">{html.escape(c)}</td>' for c in cells) + '</tr>'
      for name, cells in rows)
  return f'<table id="{table_id}"><tr>{head}</tr>{body}</table>'


def figure_html(figure: Figure, png: bytes, legend: list[str]) -> str:
  """A <figure> with the PNG embedded as base64; its panels and legend in the caption."""
  data = base64.b64encode(png).decode('ascii')
  title, shown = html.escape(figure.title), html.escape(', '.join(legend))
  panels = html.escape('; '.join(p.title for p in figure.panels))
  return (f'<figure id="fig-{figure.id}"><img alt="{title}" src="data:image/png;base64,{data}">'
          f'<figcaption>{title}: <span class="panels">{panels}</span> '
          f'<span class="legend">[{shown}]</span></figcaption></figure>')


def notes(runs: list[Run]) -> list[str]:
  """What the page cannot show, in words (no rows yet, no eval, unreadable lines)."""
  said = []
  for run in runs:
    if not run.train:
      said.append(f'{run.label}: no training rows in metrics.jsonl yet')
    if not run.evals:
      said.append(f'{run.label}: no eval results yet (RUN/eval/ or eval rows of metrics.jsonl)')
    if run.skipped_lines:
      said.append(f'{run.label}: {run.skipped_lines} line(s) of metrics.jsonl not readable '
                  '(being written?) were skipped')
  return said


def build(runs: list[Run]) -> tuple[str, dict[str, bytes]]:
  """(the HTML page, PNG file name -> bytes)."""
  labels = [run.label for run in runs]
  pngs: dict[str, bytes] = {}
  parts = [f'<h1>Run report: {html.escape(", ".join(labels))}</h1>',
           '<ul>' + ''.join(f'<li>{html.escape(r.label)}: <code>{html.escape(r.path)}</code></li>'
                            for r in runs) + '</ul>']
  parts += [f'<p class="note">{html.escape(n)}</p>' for n in notes(runs)]
  parts += ['<h2>Final figures</h2>', table(['metric', *labels], summary_rows(runs), 'summary')]
  if len(runs) > 1:
    differences = config_differences(runs)
    parts.append('<h2>Config differences</h2>')
    parts.append(table(['field', *labels], differences, 'config-diff') if differences else
                 '<p class="note">The runs\' configs are identical.</p>')
  for heading, figures in (('Training', TRAIN_FIGURES), ('Evaluation', eval_figures(runs))):
    drawn = [f for f in (with_data(f, runs) for f in figures) if f is not None]
    if drawn:
      parts.append(f'<h2>{heading}</h2><div class="figures">')
    for figure in drawn:
      png, legend = draw(figure, runs)
      pngs[f'{figure.id}.png'] = png
      parts.append(figure_html(figure, png, legend))
    if drawn:
      parts.append('</div>')
  page = ('<!DOCTYPE html><html><head><meta charset="utf-8"><title>Run report: '
          f'{html.escape(", ".join(labels))}</title><style>{STYLE}</style></head><body>'
          + '\n'.join(parts) + '</body></html>\n')
  return page, pngs


def write(out: str, page: str, pngs: dict[str, bytes]) -> str:
  """Writes the page and the PNGs into `out`; returns the page's path."""
  storage.makedirs(out)
  for name, png in pngs.items():
    storage.write_bytes(storage.join(out, name), png)
  path = storage.join(out, PAGE)
  storage.write_text(path, page)
  return path


def main(argv: list[str]) -> int:
  """Reads the runs, writes the report, prints where; a bad path is one line, exit 2."""
  args = parse(argv)
  try:
    runs = read_runs(args.runs)
    page, pngs = build(runs)
    path = write(args.out or default_out(args.runs), page, pngs)
  except (ConfigError, FileNotFoundError, PermissionError) as e:
    print(f'error: {storage.first_line(e)}', file=sys.stderr)
    return 2
  print(f'report: {path} ({len(pngs)} figures)', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))

"""python -m eval.report on real demo runs: the page, its figures (decoded, not blank), overlays
with a config-difference table, a run without eval, a run being written, a bucket workdir."""

import base64
import io
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from data import storage
from eval import report
from eval.job import Outputs
from eval.report_data import split_rows
from tests.helpers import read_metrics, run_train

TINY = ('--config.model.image_size=16', '--config.model.context_length=8', '--config.batch_size=16',
        '--config.optim.warmup_steps=1', '--config.log_every=1', '--config.compile_cache_dir=')
TRAIN_FIGURES = ('loss', 'temperature', 'lr', 'accuracy', 'grad_norm', 'throughput', 'skips')
# Results of two eval kinds written by the eval jobs' own writer: a kind the report has never
# heard of (with nested numbers) must show up as well as zeroshot.
PROBE = {2: {'top1': 0.25, 'per_split': {'val': 0.5}}, 4: {'top1': 0.75, 'per_split': {'val': 1.0}}}
ZEROSHOT = {2: {'acc1': 0.125, 'num_examples': 8}, 4: {'acc1': 0.375, 'num_examples': 8}}


@pytest.fixture(scope='module')
def run_a(tmp_path_factory):
  """A 4-step demo run with the trainer's final zero-shot eval, plus eval-job results."""
  workdir = tmp_path_factory.mktemp('runs') / 'run_a'
  done = run_train(workdir, *TINY, '--config.total_steps=4', '--config.checkpoint_every=4')
  assert done.returncode == 0, done.stderr[-2000:]
  for kind, results in (('zeroshot', ZEROSHOT), ('linear_probe', PROBE)):
    outputs = Outputs(str(workdir), kind, 'shapes_zeroshot', {'kind': kind})
    for step, metrics in results.items():
      outputs.write(step, dict(metrics, wall_s=1.5), {})
  return workdir


@pytest.fixture(scope='module')
def run_b(tmp_path_factory):
  """A second, shorter run with another learning rate and no eval at all."""
  workdir = tmp_path_factory.mktemp('runs') / 'run_b'
  done = run_train(workdir, *TINY, '--config.total_steps=2', '--config.checkpoint_every=2',
                   '--config.optim.lr=0.0005', '--config.eval.zeroshot=')
  assert done.returncode == 0, done.stderr[-2000:]
  return workdir


def make_report(*argv) -> tuple[str, dict[str, bytes]]:
  """Runs the CLI; -> (the page, the figure ids it shows -> the embedded PNG bytes)."""
  assert report.main([str(a) for a in argv]) == 0
  out = argv[argv.index('--out') + 1] if '--out' in argv else storage.join(str(argv[0]), 'report')
  page = storage.read_text(storage.join(str(out), 'index.html'))
  figures = {m.group(1): base64.b64decode(m.group(2)) for m in re.finditer(
      r'<figure id="fig-([^"]+)"><img alt="[^"]*" src="data:image/png;base64,([^"]+)"', page)}
  for figure_id, png in figures.items():  # every PNG file is the embedded image
    assert storage.read_bytes(storage.join(str(out), f'{figure_id}.png')) == png
  return page, figures


def assert_not_blank(png: bytes) -> None:
  """Decodes and finds more than one shade (axes, curves, text)."""
  image = Image.open(io.BytesIO(png))
  image.load()
  pixels = np.asarray(image.convert('L'), np.float64)
  assert image.format == 'PNG' and min(pixels.shape) > 100 and pixels.var() > 100


def legend(page: str, figure_id: str) -> str:
  """The legend labels shown under one figure."""
  return re.search(rf'<figure id="fig-{re.escape(figure_id)}">.*?<span class="legend">\[(.*?)\]',
                   page).group(1)


def panels(page: str, figure_id: str) -> str:
  """The panel titles of one figure."""
  return re.search(rf'<figure id="fig-{re.escape(figure_id)}">.*?<span class="panels">(.*?)</span>',
                   page).group(1)


def summary_cell(page: str, metric: str) -> str:
  """The summary table's first run cell for `metric`."""
  table = re.search(r'<table id="summary">(.*?)</table>', page).group(1)
  return re.search(rf'<tr><td>{re.escape(metric)}</td><td class="num">(.*?)</td>', table).group(1)


def test_one_run_draws_every_training_and_eval_figure(run_a):
  page, figures = make_report(run_a)
  [zeroshot] = (run_a / 'eval' / 'zeroshot').iterdir()
  [probe] = (run_a / 'eval' / 'linear_probe').iterdir()
  expected = {*TRAIN_FIGURES, 'eval-metrics.jsonl_zeroshot_shapes_zeroshot',
              f'eval-zeroshot_{zeroshot.name}', f'eval-linear_probe_{probe.name}'}
  assert set(figures) == expected
  for png in figures.values():
    assert_not_blank(png)
  assert panels(page, 'temperature') == 'temperature'  # softmax: no SigLIP bias panel
  assert panels(page, 'skips') == 'non-finite updates skipped (total); bad records skipped (total)'
  rows = read_metrics(run_a)
  assert [r['step'] for r in rows] == [1, 2, 3, 4]
  assert summary_cell(page, 'loss') == f'{report.fmt(rows[-1]["loss"])} (step 4)'
  assert summary_cell(page, 'last logged step') == '4'
  final = read_metrics(run_a, evals=True)[0]
  assert summary_cell(page, 'metrics.jsonl:zeroshot/shapes_zeroshot/acc1') == \
      f'{report.fmt(final["zeroshot/shapes_zeroshot/acc1"])} (step 4)'
  # Every numeric key of every step_N.json, nested ones by path; provenance keys are not drawn.
  assert summary_cell(page, f'linear_probe/{probe.name}/per_split.val') == '1 (step 4)'
  assert summary_cell(page, f'zeroshot/{zeroshot.name}/acc1') == '0.375 (step 4)'
  assert f'zeroshot/{zeroshot.name}/wall_s' in page
  assert f'zeroshot/{zeroshot.name}/settings_hash' not in page
  assert 'Config differences' not in page  # one run: nothing to compare


def test_resumed_steps_last_write_wins_and_a_half_written_line_is_skipped(run_a, tmp_path):
  train, evals = split_rows([{'step': 2, 'loss': 1.0}, {'step': 4, 'loss': 2.0},
                             {'step': 3, 'loss': 3.0}, {'step': 4, 'loss': 4.0},
                             {'step': 4, 'eval/x/acc1': 0.5}])
  assert train == {'loss': {2: 1.0, 3: 3.0, 4: 4.0}}
  assert evals == {'metrics.jsonl:eval/x/acc1': {4: 0.5}}
  workdir = tmp_path / 'training'
  shutil.copytree(run_a, workdir, ignore=shutil.ignore_patterns('checkpoints', 'report'))
  with open(workdir / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 5, "acc_i2t": 0.06')  # the trainer is appending this row
  page, figures = make_report(workdir, '--out', tmp_path / 'out')
  assert '1 line(s) of metrics.jsonl not readable' in page
  assert summary_cell(page, 'last logged step') == '4' and 'loss' in figures


@pytest.mark.slow  # trains a second run (~20 s)
def test_two_runs_overlaid_with_their_config_differences(run_a, run_b, tmp_path):
  page, figures = make_report(run_a, run_b, '--out', tmp_path / 'both')
  assert legend(page, 'loss') == 'run_a, run_b'
  assert legend(page, 'accuracy') == 'run_a acc_i2t, run_a acc_t2i, run_b acc_i2t, run_b acc_t2i'
  assert legend(page, 'eval-metrics.jsonl_zeroshot_shapes_zeroshot') == 'run_a'  # b has none
  diff = re.search(r'<table id="config-diff">(.*?)</table>', page).group(1)
  fields = re.findall(r'<tr><td>([^<]+)</td>', diff)
  assert fields == ['checkpoint_every', 'eval.zeroshot', 'optim.lr', 'total_steps']
  assert '<td>optim.lr</td><td class="num">0.001</td><td class="num">0.0005</td>' in diff
  for png in figures.values():
    assert_not_blank(png)


@pytest.mark.slow  # the second run's training (shared with the overlay test)
def test_a_run_without_eval_draws_its_training_only(run_b):
  page, figures = make_report(run_b)
  assert set(figures) == set(TRAIN_FIGURES)
  assert 'run_b: no eval results yet' in page and 'Evaluation' not in page
  assert summary_cell(page, 'last logged step') == '2'


def test_a_folder_that_is_no_run_is_one_line(tmp_path, capsys):
  assert report.main([str(tmp_path / 'missing')]) == 2
  assert report.main([str(tmp_path)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == [f'error: {tmp_path / "missing"} is not a folder: expected a training run\'s '
                 '--workdir',
                 f'error: {tmp_path} has no metrics.jsonl, eval results or config.json: is it a '
                 'training run\'s --workdir?']


@pytest.mark.slow  # starts the GCS emulator
def test_a_run_in_a_bucket_reports_into_the_bucket(run_a, gcs):  # noqa: F811
  from tests.test_eval_buckets import upload
  run = storage.join(gcs.bucket('report'), 'run_a')
  upload(run_a, run, skip=('checkpoints', 'report', 'compile_cache'))
  page, figures = make_report(run)  # default --out: RUN/report, in the bucket
  local_page, local_figures = make_report(run_a, '--out', run_a / 'again')
  assert set(figures) == set(local_figures) and len(figures) == 10
  assert summary_cell(page, 'loss') == summary_cell(local_page, 'loss')
  for png in figures.values():
    assert_not_blank(png)
  assert json.loads(storage.read_text(storage.join(run, 'config.json')))['total_steps'] == 4


def test_siglip_logs_its_bias_and_the_report_gives_it_a_panel():
  from tests.helpers import loss_and_grads, mesh, random_batch, tiny_config
  from eval.report_data import Run
  from eval.report_plots import TRAIN_FIGURES as FIGURES, draw, with_data
  config = tiny_config()
  config.loss.name, config.loss.impl = 'sigmoid', 'ring'
  _, metrics, _ = loss_and_grads(config, mesh(8, 1), random_batch(config, 16))
  assert float(metrics['logit_bias']) == config.loss.init_logit_bias  # -10 at init
  run = Run('siglip', 'siglip', {'temperature': {1: 0.1, 2: 0.09}, 'logit_bias': {1: -10.0, 2: -9.5}},
            {}, {})
  [temperature] = [f for f in FIGURES if f.id == 'temperature']
  figure = with_data(temperature, [run])
  assert [p.title for p in figure.panels] == ['temperature', 'SigLIP bias']
  png, labels = draw(figure, [run])
  assert labels == ['siglip']
  assert_not_blank(png)

"""A short Matryoshka training run: per-prefix losses in metrics.jsonl, and zero-shot / retrieval
at every prefix equal to the metrics of directly truncated and re-normalised embeddings."""

import numpy as np
import pytest

from data.errors import ConfigError
from data.shapes import ShapesSource
from eval import retrieval, zeroshot
from eval.prefixes import parse_dims
from eval.retrieval import evaluate_retrieval
from eval.retrieval_lib import retrieval_metrics
from eval.run_model import RunModel
from eval.templates import load_templates
from eval.zeroshot_lib import evaluate_zeroshot, source_labels, zeroshot_metrics
from tests.helpers import read_metrics, run_train

KW = dict(image_size=16, context_length=12, batch_size=64)


@pytest.fixture(scope='module')
def mrl_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('mrl')
  result = run_train(workdir, '--config.model.image_size=16', '--config.model.context_length=12',
                     '--config.batch_size=32', '--config.optim.warmup_steps=1',
                     '--config.log_every=1', '--config.total_steps=2', '--config.eval.zeroshot=',
                     '--config.loss.matryoshka_dims=32,64', devices=2)
  assert result.returncode == 0, result.stderr[-2000:]
  return workdir, result.stdout


def unit_prefix(x, k):
  x = np.asarray(x, np.float64)[:, :k]
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_training_run_writes_each_prefix_loss(mrl_run):
  workdir, stdout = mrl_run
  rows = read_metrics(workdir)
  assert [r['step'] for r in rows] == [1, 2]
  for row in rows:  # weights default to 1; the demo's full width 128 joins the listed dims
    assert abs(row['loss'] - (row['loss@32'] + row['loss@64'] + row['loss@128'])) <= 1e-5 * row['loss']
    assert 0.0 <= row['acc_i2t@32'] <= 1.0
  # The progress line shows the full-width loss, then the optimised sum.
  [line] = [l for l in stdout.splitlines() if l.startswith('step 2/2')]
  assert f'loss {rows[-1]["loss@128"]:.4f}  mrl {rows[-1]["loss"]:.4f}' in line


def test_parse_dims(mrl_run):
  config = RunModel(str(mrl_run[0])).config
  assert parse_dims(None, config) == (32, 64, 128)  # the run's dims, then full
  assert parse_dims('16,full', config) == (16, 128)
  assert parse_dims('64,8', config) == (8, 64, 128)  # sorted; full always added
  config.loss.matryoshka_dims = []
  assert parse_dims(None, config) == (128,)
  for bad in ('0', '129', 'half', '8,,16'):
    with pytest.raises(ConfigError, match='^--dims'):
      parse_dims(bad, config)


def test_zeroshot_at_every_prefix(mrl_run):
  run = RunModel(str(mrl_run[0]))
  _, embedder = run.embedder(None)
  source, templates = ShapesSource('zeroshot', 16, size=40), load_templates('shapes')
  metrics = evaluate_zeroshot(embedder, run.tokenizer, source, templates, dims=(8, 32, 128), **KW)
  plain = evaluate_zeroshot(embedder, run.tokenizer, source, templates, **KW)
  assert {k: v for k, v in metrics.items() if '@' not in k and k != 'confusion'} == {
      k: v for k, v in plain.items() if k != 'confusion'}
  images = embedder.embed_images(source, 16, 64)
  names = source.classnames
  prompts = [t.replace('{c}', n) for n in names for t in templates]
  prompt_emb = embedder.embed_texts(run.tokenizer.encode(prompts, 12), 64)
  for k in (8, 32):
    classes = unit_prefix(prompt_emb, k).reshape(len(names), len(templates), k).mean(axis=1)
    expected = zeroshot_metrics(unit_prefix(images, k), source_labels(source),
                                unit_prefix(classes, k))
    for name in ('acc1', 'acc5', 'mean_per_class_recall'):
      assert metrics[f'{name}@{k}'] == pytest.approx(expected[name], abs=1e-12), (name, k)
  assert 'confusion@8' not in metrics and 'num_examples@8' not in metrics


def test_retrieval_at_every_prefix(mrl_run):
  run = RunModel(str(mrl_run[0]))
  _, embedder = run.embedder(None)
  source = ShapesSource('retrieval', 16, size=24)
  metrics = evaluate_retrieval(embedder, run.tokenizer, source, dims=(16, 64, 128), **KW)
  captions = [c for i in range(len(source)) for c in source.text(i)]
  owner = np.repeat(np.arange(len(source)), [len(source.text(i)) for i in range(len(source))])
  images = embedder.embed_images(source, 16, 64)
  texts = embedder.embed_texts(run.tokenizer.encode(captions, 12), 64)
  for k in (16, 64):
    expected = retrieval_metrics(unit_prefix(images, k), unit_prefix(texts, k), owner)
    for name, value in expected.items():
      assert metrics[f'{name}@{k}'] == pytest.approx(value, abs=1e-12), (name, k)
  full = retrieval_metrics(images, texts, owner)
  assert all(metrics[name] == value for name, value in full.items())
  assert 'text_retrieval_recall@1@16' in metrics


def test_other_dims_get_their_own_results_folder(mrl_run):
  workdir = str(mrl_run[0])
  folders = []
  for job, dataset in ((zeroshot, 'shapes:zeroshot'), (retrieval, 'shapes:retrieval')):
    for flags in ([], ['--dims', '32,64,full'], ['--dims', 'full']):
      outputs, _ = job.make_job(job.parse(['--workdir', workdir, '--dataset', dataset, *flags]))
      folders.append(outputs.folder)
  # The default (the run's dims) is 32,64,full: one folder; full only: another.
  assert folders[0] == folders[1] != folders[2] and folders[3] == folders[4] != folders[5]

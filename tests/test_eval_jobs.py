"""Offline eval jobs on a real (tiny) training run: sharding, exact counts, watch mode, CLIs."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from data.shapes import ShapesSource
from eval import zeroshot
from eval.embed import Embedder
from eval.job import watch
from eval.run_model import RunModel
from eval.templates import load_templates
from eval.zeroshot_lib import evaluate_zeroshot
from pretrain.runtime.checkpoint import complete_steps
from tests.helpers import ROOT, mesh, run_train


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('run')
  result = run_train(workdir, '--config.model.image_size=16', '--config.model.context_length=12',
                     '--config.batch_size=16', '--config.total_steps=6', '--config.log_every=2',
                     '--config.checkpoint_every=2', '--config.keep_checkpoints=5',
                     '--config.optim.warmup_steps=1', '--config.eval.zeroshot=')
  assert result.returncode == 0, result.stderr[-2000:]
  return workdir


def test_zeroshot_on_8_devices_equals_1_device_and_counts_each_example_once(run_dir):
  run = RunModel(str(run_dir))
  step, params = 6, run.embedder(6)[1].params
  source = ShapesSource('zeroshot', 16, size=13)  # 13: not divisible by 8 devices
  kwargs = dict(image_size=16, context_length=12, batch_size=8)
  results = []
  for the_mesh in (mesh(8, 1), mesh(1, 1, jax.devices()[:1])):
    embedder = Embedder(run.graphdef, jax.device_put(params, jax.sharding.NamedSharding(
        the_mesh, jax.sharding.PartitionSpec())), the_mesh)
    metrics = evaluate_zeroshot(embedder, run.tokenizer, source, load_templates('shapes'), **kwargs)
    images = embedder.embed('images', lambda idx: np.stack([source[int(i)]['image'] for i in idx]),
                            len(source), 8)
    results.append((metrics, images))
  (m8, e8), (m1, e1) = results
  assert m8['num_examples'] == 13 and m8['confusion'].sum() == 13 and e8.shape[0] == 13
  np.testing.assert_allclose(e8, e1, atol=1e-6)
  assert m8['acc1'] == m1['acc1'] and m8['acc5'] == m1['acc5']
  np.testing.assert_array_equal(m8['confusion'], m1['confusion'])


def test_watch_handles_new_deleted_and_restart(run_dir, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(run_dir, workdir)
  stash = tmp_path / 'stash'
  stash.mkdir()
  ckpts = workdir / 'checkpoints'
  for step in ('4', '6'):
    shutil.move(ckpts / step, stash / step)
  (ckpts / '8.orbax-checkpoint-tmp').mkdir()  # a checkpoint still being written is ignored
  assert complete_steps(str(workdir)) == [2]
  args = zeroshot.parse(['--workdir', str(workdir), '--dataset', 'shapes:zeroshot',
                         '--templates', 'shapes', '--watch', '--batch_size', '64'])
  outputs, evaluate = zeroshot.make_job(args)
  calls = []

  def evaluate_and_move_things(step):
    calls.append(step)
    if step == 2:  # While watching: checkpoints 4 and 6 appear...
      shutil.move(stash / '4', ckpts / '4')
      shutil.move(stash / '6', ckpts / '6')
    if step == 4:  # ...and keep-N deletes 4 before it is read.
      shutil.rmtree(ckpts / '4')
    return evaluate(step)

  evaluated = watch(str(workdir), outputs, evaluate_and_move_things, poll_seconds=0.01, max_polls=5)
  assert evaluated == [2, 6] and calls == [2, 4, 6]
  result = json.loads((workdir / 'eval/zeroshot/shapes_zeroshot/step_6.json').read_text())
  assert result['step'] == 6 and result['num_examples'] == 960 and 0 <= result['acc1'] <= 1
  assert (workdir / 'eval/zeroshot/shapes_zeroshot/step_6_confusion.json').is_file()
  # A restarted job finds everything done and exits without evaluating again.
  assert watch(str(workdir), outputs, evaluate_and_move_things, poll_seconds=0.01,
               max_polls=5) == []
  assert calls == [2, 4, 6]


@pytest.mark.parametrize('module, dataset, key', [
    ('eval.zeroshot', 'shapes:zeroshot', 'acc1'),
    ('eval.retrieval', 'shapes:retrieval', 'image_retrieval_recall@1'),
])
def test_cli_writes_metrics_and_summary(run_dir, module, dataset, key):
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS='--xla_force_host_platform_device_count=4')
  cmd = [sys.executable, '-m', module, '--workdir', str(run_dir), '--dataset', dataset, '--once',
         '--batch_size', '64']
  result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  kind = module.split('.')[1]
  name = dataset.replace(':', '_')
  metrics = json.loads((run_dir / 'eval' / kind / name / 'step_6.json').read_text())
  assert 0.0 <= metrics[key] <= 1.0
  assert f'{kind} {name} step 6:' in result.stdout


@pytest.mark.parametrize('fmt, module, key', [
    ('imagefolder', 'eval.zeroshot', 'acc5'),
    ('wds', 'eval.retrieval', 'text_retrieval_recall@5'),
    ('jsonl', 'eval.retrieval', 'image_retrieval_mean_rank'),
])
def test_cli_on_file_formats(run_dir, tmp_path, fmt, module, key):
  from data.make_corpus import write_corpus
  split = 'zeroshot' if module == 'eval.zeroshot' else 'retrieval'
  spec = write_corpus(fmt, str(tmp_path / fmt), 53, split, 16, per_shard=20)
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS='--xla_force_host_platform_device_count=4')
  cmd = [sys.executable, '-m', module, '--workdir', str(run_dir), '--dataset', spec, '--step', '4',
         '--batch_size', '16', *(['--templates', 'shapes'] if split == 'zeroshot' else [])]
  result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  from data.sources import open_source
  from eval.job import dataset_name
  name = dataset_name(open_source(spec), spec)
  metrics = json.loads((run_dir / 'eval' / module.split('.')[1] / name / 'step_4.json').read_text())
  assert metrics['num_examples'] == 53 and key in metrics and metrics['dataset'] == name
  if split == 'retrieval':
    assert metrics['num_captions'] == 53 * 5


def test_cli_errors_are_one_line(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  cmd = [sys.executable, '-m', 'eval.zeroshot', '--workdir', str(tmp_path), '--dataset',
         'shapes:zeroshot']
  result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2 and result.stderr.strip().startswith('error: ')
  assert 'config.json does not exist' in result.stderr

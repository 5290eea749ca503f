"""Linear and few-shot probes: the closed form against numpy, separable -> 100%, random labels ->
chance, deterministic few-shot draws, and the job on a tiny run (CLIP_benchmark-format set and
--train/--test specs)."""

import json

import numpy as np
import pytest

from data.errors import ConfigError
from eval import linear_probe
from eval.job import cli
from eval.linear_probe_lib import (fewshot_indices, fewshot_probe, fit_ridge, holdout_split,
                                   linear_probe as probe, select_l2)


def clusters(seed: int, n: int, classes: int = 12, dim: int = 24, noise: float = 0.3):
  """Unit embeddings around one random centre per class; labels cycle through the classes."""
  rng = np.random.default_rng(seed)
  centres = np.random.default_rng(99).normal(size=(classes, dim))
  labels = rng.permutation(np.arange(n) % classes)
  x = centres[labels] + noise * rng.normal(size=(n, dim))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def test_ridge_equals_numpy_closed_form():
  x, y = clusters(0, 90, classes=5, dim=8, noise=1.0)
  w, b = fit_ridge(x, y, 5, l2_scale=0.3)
  xc = x.astype(np.float64) - x.mean(0)
  onehot = np.eye(5)[y]
  l2 = 0.3 * np.trace(xc.T @ xc) / 8
  want_w = np.linalg.solve(xc.T @ xc + l2 * np.eye(8), xc.T @ (onehot - onehot.mean(0)))
  np.testing.assert_allclose(w, want_w, rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(b, onehot.mean(0) - x.mean(0) @ want_w, rtol=2e-4, atol=2e-5)


def test_separable_embeddings_reach_100_percent():
  train_x, train_y = clusters(1, 600)
  test_x, test_y = clusters(2, 300)
  metrics = probe(train_x, train_y, test_x, test_y, 12)
  assert metrics['lp_acc1'] == 1.0 and metrics['lp_acc5'] == 1.0
  assert metrics['lp_mean_per_class_recall'] == 1.0
  assert np.trace(metrics['lp_confusion']) == 300
  few = fewshot_probe(train_x, train_y, test_x, test_y, 12, shots=[5], seeds=2)
  assert few['lp_acc1@5shot'] == 1.0 and few['lp_acc1@5shot_std'] == 0.0
  assert few['lp_per_seed']['5shot']['lp_acc1'] == [1.0, 1.0]


def test_random_labels_give_chance():
  """10 classes: chance is 0.1; 4000 test examples put 0.1 +- 0.03 at 6 standard deviations,
  while the same embeddings with their true labels score 1.0 (the separable test)."""
  train_x, _ = clusters(3, 2000, classes=10)
  test_x, _ = clusters(4, 4000, classes=10)
  rng = np.random.default_rng(5)
  metrics = probe(train_x, rng.integers(0, 10, 2000), test_x, rng.integers(0, 10, 4000), 10)
  assert abs(metrics['lp_acc1'] - 0.1) < 0.03
  assert abs(metrics['lp_mean_per_class_recall'] - 0.1) < 0.03
  assert abs(metrics['lp_acc5'] - 0.5) < 0.05


def test_l2_is_chosen_on_held_out_data():
  """Few noisy examples in many dimensions: no regularisation overfits, so the sweep's choice is
  not its weakest end, and the held-out accuracy it reports is the best of the sweep."""
  x, y = clusters(6, 60, classes=6, dim=48, noise=2.0)
  val_x, val_y = clusters(7, 600, classes=6, dim=48, noise=2.0)
  scale, accs = select_l2(x, y, val_x, val_y, 6)
  assert scale > 1e-4 and max(accs) > accs[0]


def test_holdout_split_is_stratified_and_disjoint():
  labels = np.array([0] * 10 + [1] * 5 + [2] * 1 + [3] * 2)
  fit, held = holdout_split(labels, 0.2)
  assert sorted(np.concatenate([fit, held])) == list(range(len(labels)))
  assert [int(np.sum(labels[held] == c)) for c in range(4)] == [2, 1, 0, 1]
  np.testing.assert_array_equal(holdout_split(labels, 0.2)[1], held)


def test_fewshot_draws_are_exact_deterministic_and_differ_across_seeds():
  labels = np.random.default_rng(0).integers(0, 7, 500)
  draws = {seed: fewshot_indices(labels, 5, seed) for seed in range(4)}
  for seed, idx in draws.items():
    assert np.bincount(labels[idx], minlength=7).tolist() == [5] * 7
    assert len(set(idx)) == 35
    np.testing.assert_array_equal(fewshot_indices(labels, 5, seed), idx)
    assert set(fewshot_indices(labels, 2, seed)) <= set(idx)  # nested in k
  assert len({tuple(idx) for idx in draws.values()}) == 4
  with pytest.raises(ConfigError, match='class 3 has only 1 training examples'):
    fewshot_indices(np.array([0, 0, 1, 1, 2, 2, 3]), 2, 0)


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  """A run workdir as the eval jobs read it (config, tokenizer, checkpoint 0) of the demo model
  at 16 px with random parameters: written directly, seconds instead of a training run's minutes."""
  from tests.interop_probe import demo_config, make_probe_workdir
  config = demo_config()
  config.model.image_size, config.model.context_length = 16, 12
  workdir = tmp_path_factory.mktemp('run') / 'run'
  make_probe_workdir(str(workdir), config=config)
  return workdir


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  """A CLIP_benchmark-format classification set `vtab/shapes`: 192 train, 96 test images."""
  from data.shapes import ShapesSource
  from eval.benchmark_export import export
  root = tmp_path_factory.mktemp('sets')
  for split, count in (('train', 192), ('test', 96)):
    export(ShapesSource('zeroshot', 16), str(root), 'vtab/shapes', 'classification', split, count)
  return root


def test_job_on_a_clip_benchmark_set_writes_the_metrics(run_dir, root, capsys):
  code = cli(linear_probe.parse, linear_probe.make_job, [
      '--workdir', str(run_dir), '--dataset', 'vtab/shapes', '--data_root', str(root),
      '--shots', '1,2', '--seeds', '2', '--step', '0', '--batch_size', '64'])
  out = capsys.readouterr()
  assert code == 0, out.err
  [found] = (run_dir / 'eval' / 'linear_probe').glob('vtab_shapes-*/step_0.json')
  result = json.loads(found.read_text())
  assert result['num_examples'] == 96 and result['num_train'] == 192
  for key in ('lp_acc1', 'lp_acc5', 'lp_mean_per_class_recall', 'lp_acc1@1shot',
              'lp_acc1@2shot_std', 'lp_mean_per_class_recall@2shot'):
    assert 0.0 <= result[key] <= 1.0, key
  assert len(result['lp_per_seed']['1shot']['lp_acc1']) == 2
  assert result['settings']['probe']['num_classes'] == 48
  assert list(found.parent.glob('events.out.tfevents.*'))
  assert np.sum(json.loads((found.parent / 'step_0_confusion.json').read_text())) == 96
  [line] = [l for l in out.out.splitlines() if l.startswith('linear_probe vtab_shapes step 0:')]
  assert 'lp_acc1 ' in line and 'lp_acc1@2shot ' in line


def test_job_on_specs_and_its_errors(run_dir, root, capsys):
  train, test = (f'wds:{root}/wds_vtab-shapes/{split}/*.tar' for split in ('train', 'test'))
  code = cli(linear_probe.parse, linear_probe.make_job, [
      '--workdir', str(run_dir), '--train', train, '--test', test, '--once', '--batch_size', '64'])
  assert code == 0, capsys.readouterr().err
  results = list((run_dir / 'eval' / 'linear_probe').glob('*/step_0.json'))
  [result] = [r for r in map(json.loads, (f.read_text() for f in results))
              if r['given']['train'] == train and r['given']['dataset'] is None]
  assert result['num_train'] == 192 and result['num_examples'] == 96
  assert 'lp_acc1@1shot' not in result and 0 <= result['lp_acc1'] <= 1
  for argv in (['--train', 'shapes:zeroshot'], ['--dataset', 'x'],
               ['--train', 'shapes:zeroshot', '--test', 'shapes:zeroshot', '--shots', '0']):
    capsys.readouterr()
    assert cli(linear_probe.parse, linear_probe.make_job, ['--workdir', str(run_dir), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1, err

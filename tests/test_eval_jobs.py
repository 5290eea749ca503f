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
from data.errors import ConfigError
from eval import retrieval, zeroshot
from eval.embed import Embedder
from eval.job import cli, watch
from eval.run_model import RunModel
from eval.templates import load_templates
from eval.zeroshot_lib import evaluate_zeroshot
from pretrain.runtime.checkpoint import complete_steps
from tests.helpers import ROOT, mesh, read_metrics, run_train, tb_events


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('run')
  # Evaluated while training (eval.in_training) at step 4 and the final step 6.
  result = run_train(workdir, '--config.model.image_size=16', '--config.model.context_length=12',
                     '--config.batch_size=16', '--config.total_steps=6', '--config.log_every=2',
                     '--config.checkpoint_every=2', '--config.keep_checkpoints=5',
                     '--config.optim.warmup_steps=1', '--config.eval.every=4',
                     '--config.eval.tasks=retrieval=shapes:retrieval')
  assert result.returncode == 0, result.stderr[-2000:]
  return workdir


def result_file(workdir, kind: str, name: str, step: int):
  """The one step_<step>.json of RUN/eval/<kind>/<name>-<hash>/ (asserting there is one)."""
  [found] = (workdir / 'eval' / kind).glob(f'{name}-*/step_{step}.json')
  return found


def test_zeroshot_on_8_devices_equals_1_device_and_counts_each_example_once(run_dir, monkeypatch,
                                                                           capsys):
  monkeypatch.setenv('EVAL_PROGRESS_SECONDS', '0')  # a progress line per batch (eval.progress)
  run = RunModel(str(run_dir))
  step, params = 6, run.embedder(6)[1].params
  source = ShapesSource('zeroshot', 16, size=13)  # 13: not divisible by 8 devices
  kwargs = dict(image_size=16, context_length=12, batch_size=8)
  results = []
  for the_mesh in (mesh(8, 1), mesh(1, 1, jax.devices()[:1])):
    embedder = Embedder(run.graphdef, jax.device_put(params, jax.sharding.NamedSharding(
        the_mesh, jax.sharding.PartitionSpec())), the_mesh)
    metrics = evaluate_zeroshot(embedder, run.tokenizer, source, load_templates('shapes'), **kwargs)
    capsys.readouterr()
    images = embedder.embed('images', lambda idx: np.stack([source[int(i)]['image'] for i in idx]),
                            len(source), 8)
    results.append((metrics, images))
    lines = capsys.readouterr().err.splitlines()  # 13 rows, 8 a batch: one line, then the total
    assert len(lines) == 2 and lines[0].startswith('embedding images: 8/13 (61%)  ')
    assert lines[1].startswith('embedded 13/13 images in '), lines
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
  result = json.loads(result_file(workdir, 'zeroshot', 'shapes_zeroshot', 6).read_text())
  assert result['step'] == 6 and result['num_examples'] == 960 and 0 <= result['acc1'] <= 1
  assert os.path.isfile(os.path.join(outputs.folder, 'step_6_confusion.json'))
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
  metrics = json.loads(result_file(run_dir, kind, name, 6).read_text())
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
  metrics = json.loads(result_file(run_dir, module.split('.')[1], name, 4).read_text())
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


@pytest.fixture
def run_copy(run_dir, tmp_path):
  """A copy of the run without its eval results, so settings tried here see only their own."""
  workdir = tmp_path / 'run'
  shutil.copytree(run_dir, workdir, ignore=shutil.ignore_patterns('eval'))
  return workdir


def _zeroshot_job(workdir, dataset, *flags):
  args = zeroshot.parse(['--workdir', str(workdir), '--dataset', dataset, '--step', '6',
                         '--batch_size', '64', *flags])
  return zeroshot.make_job(args)


def test_classnames_must_give_one_name_per_class(run_copy, tmp_path, capsys):
  names = tmp_path / 'names.txt'
  names.write_text(''.join(f'class {i}\n' for i in range(40)))
  code = cli(zeroshot.parse, zeroshot.make_job, [
      '--workdir', str(run_copy), '--dataset', 'shapes:zeroshot', '--classnames', str(names),
      '--step', '6'])
  err = capsys.readouterr().err
  assert code == 2 and err.count('\n') == 1, err
  assert '40 names for the 48 classes of shapes:zeroshot' in err
  assert not (run_copy / 'eval').exists()


def test_classnames_of_a_folder_set_map_by_name_or_are_refused(run_copy, tmp_path):
  from data.make_corpus import write_corpus
  spec = write_corpus('imagefolder', str(tmp_path / 'folders'), 96, 'zeroshot', 16)
  folders = sorted(os.listdir(tmp_path / 'folders'))

  def evaluate(*flags):
    outputs, evaluate = _zeroshot_job(run_copy, spec, '--templates', 'shapes', *flags)
    metrics = evaluate(6)[1]
    with open(os.path.join(outputs.folder, 'step_6_confusion.json')) as f:
      return metrics, np.array(json.load(f))

  own, own_confusion = evaluate()
  shuffled = tmp_path / 'shuffled.txt'  # every class name once, not in label order
  names = [f.replace('_', ' ') for f in folders]
  shuffled.write_text('\n'.join(names[1::2] + names[::2]))
  by_name, by_name_confusion = evaluate('--classnames', str(shuffled))
  np.testing.assert_array_equal(by_name_confusion, own_confusion)
  assert by_name['acc1'] == own['acc1'] and by_name['num_examples'] == 96
  contradiction = tmp_path / 'contradiction.txt'
  contradiction.write_text('\n'.join([folders[1], folders[0]] + [f'x{i}' for i in range(46)]))
  with pytest.raises(ConfigError, match=f'{folders[1]!r} on line 1, but it is class 1'):
    _zeroshot_job(run_copy, spec, '--classnames', str(contradiction))


def test_results_record_their_settings_and_never_share_a_folder(run_copy, tmp_path):
  legacy = run_copy / 'eval' / 'zeroshot' / 'shapes_zeroshot'  # an older version's result
  legacy.mkdir(parents=True)
  (legacy / 'step_6.json').write_text('{"step": 6, "acc1": 0.5}')
  shapes, evaluate = _zeroshot_job(run_copy, 'shapes:zeroshot', '--templates', 'shapes')
  short, _ = _zeroshot_job(run_copy, 'shapes:zeroshot', '--templates', 'short')
  assert shapes.folder != short.folder and not shapes.done(6)
  evaluate(6)
  assert shapes.done(6) and not short.done(6)
  record = json.loads(open(shapes.path(6)).read())
  settings = record['settings']
  assert settings['templates']['count'] == 4 and settings['classnames']['count'] == 48
  assert settings['dims'] == {'image_size': 16, 'context_length': 12}
  assert settings['image_transform']['mean'] == [0.5, 0.5, 0.5]
  assert settings['dataset']['records'] == 960 and record['given']['templates'] == 'shapes'
  assert os.path.basename(shapes.folder) == f'shapes_zeroshot-{record["settings_hash"]}'
  # The same settings, however they are typed, find the result: a restarted --watch skips it.
  names = tmp_path / 'names.txt'
  names.write_text('\n'.join(ShapesSource('zeroshot').classnames))
  again, _ = _zeroshot_job(run_copy, 'shapes:zeroshot', '--templates', 'shapes',
                           '--classnames', str(names))
  assert again.folder == shapes.folder and again.done(6)
  # A result whose recorded settings are not these is not taken as done.
  with open(shapes.path(6), 'w') as f:
    json.dump(dict(record, settings_hash='00000000'), f)
  assert not shapes.done(6)


def test_two_files_of_one_name_get_two_folders(run_copy, tmp_path, monkeypatch):
  from data.make_corpus import write_corpus
  a = write_corpus('csv', str(tmp_path / 'a'), 5, 'retrieval', 16)
  b = write_corpus('csv', str(tmp_path / 'b'), 7, 'retrieval', 16)

  def folder(spec):
    args = retrieval.parse(['--workdir', str(run_copy), '--dataset', spec, '--step', '6'])
    return retrieval.make_job(args)[0].folder

  assert os.path.basename(a) == os.path.basename(b)
  fa, fb = folder(a), folder(b)
  assert fa != fb and os.path.basename(fa).split('-')[0] == os.path.basename(fb).split('-')[0]
  monkeypatch.chdir(tmp_path)
  assert folder(a.replace(str(tmp_path) + '/', '')) == fa  # a relative path to the same file


def _search(capsys, *argv):
  """eval.search's command line in this process (8 devices); (exit code, stdout lines after the
  eval jobs' start-up lines, which name the checkpoint and devices)."""
  from eval import search
  code = search.main([str(a) for a in argv])
  return code, [line for line in capsys.readouterr().out.splitlines()
                if not line.startswith(('checkpoint: ', 'devices: '))]


def test_search_index_resumes_and_queries_match_brute_force(run_dir, tmp_path, capsys):
  from PIL import Image
  from eval import search, search_index, search_lib
  out = tmp_path / 'index'
  flags = ['--workdir', run_dir, '--data', 'shapes:retrieval', '--out', out, '--chunk_rows', 150,
           '--batch_size', 64]
  code, lines = _search(capsys, 'index', *flags, '--max_chunks', 2)
  assert code == 0 and 'chunks 0 already there + 2 written of 4' in lines[-1]  # as if killed
  code, lines = _search(capsys, 'query', '--index', out, '--workdir', run_dir, '--text', 'x')
  assert code == 2  # an unfinished index is refused
  code, lines = _search(capsys, 'index', *flags)
  assert code == 0 and 'chunks 2 already there + 2 written of 4' in lines[-1]
  manifest = search_index.open_index(str(out))
  index = np.concatenate(list(search_index.chunks(str(out), manifest)))
  keys = search_index.keys(str(out), manifest)
  assert index.shape[0] == 500 and list(keys) == [f'shapes_retrieval/{i}' for i in range(500)]
  np.testing.assert_allclose(np.linalg.norm(index, axis=1), 1, rtol=1e-5)
  image = tmp_path / 'query.png'
  Image.fromarray(ShapesSource('retrieval', 16)[7]['image']).save(image)
  run = RunModel(str(run_dir))
  _, embedder = run.embedder(6)
  for flags in (['--text', 'a big red circle'], ['--image', image],
                ['--image', image, '--text', 'on the left']):
    code, lines = _search(capsys, 'query', '--index', out, '--workdir', run_dir, '--k', 7, *flags)
    assert code == 0 and lines[0].startswith('# step 6, 500 items')
    named = dict(zip(flags[::2], flags[1::2]))
    query = search.embed_query(run, embedder, named.get('--text'), named.get('--image'), 8)
    scores = (query.astype(np.float64) @ index.T.astype(np.float64))[0]
    want = np.argsort(-scores, kind='stable')[:7]
    got = [line.split('\t') for line in lines[1:]]
    assert [g[2] for g in got] == list(keys[want])
    np.testing.assert_allclose([float(g[1]) for g in got], scores[want], atol=1e-5)
  parts = [search.embed_query(run, embedder, None, image, 8),
           search.embed_query(run, embedder, 'on the left', None, 8)]
  np.testing.assert_allclose(query, search_lib.compose(*parts), rtol=1e-6)
  # Adaptive search reports its recall against exact search; a full shortlist is exact.
  code, lines = _search(capsys, 'query', '--index', out, '--workdir', run_dir, '--k', 7,
                        '--text', 'a big red circle', '--shortlist_dims', 8, '--shortlist', 500)
  assert code == 0 and 'recall@7 vs exact: 1.0000' in lines[0]


def test_binary_search_index_ranks_by_hamming(run_dir, tmp_path, capsys):
  from eval import binary_codes, search, search_index
  out = tmp_path / 'binary'
  code, _ = _search(capsys, 'index', '--workdir', run_dir, '--data', 'shapes:retrieval', '--out',
                    out, '--chunk_rows', 200, '--binary', 24, '--batch_size', 64)
  assert code == 0
  manifest = search_index.open_index(str(out))
  codes = np.concatenate(list(search_index.chunks(str(out), manifest)))
  assert codes.shape == (500, 3) and codes.dtype == np.uint8
  code, lines = _search(capsys, 'query', '--index', out, '--workdir', run_dir, '--k', 9,
                        '--text', 'a small blue square')
  run = RunModel(str(run_dir))
  query = search.embed_query(run, run.embedder(6)[1], 'a small blue square', None, 8)
  bits_q = np.unpackbits(binary_codes.pack(query, 24), axis=1)
  distance = (np.unpackbits(codes, axis=1) != bits_q).sum(1)
  want = np.argsort(distance, kind='stable')[:9]
  got = [line.split('\t') for line in lines[1:]]
  assert [int(g[1]) for g in got] == list(distance[want])
  assert [g[2] for g in got] == [f'shapes_retrieval/{i}' for i in want]


def test_retrieval_with_hubness_reduction_and_binary_codes(run_copy, tmp_path):
  from data.make_corpus import write_corpus
  from eval.retrieval_variants import settings as variant_settings
  spec = write_corpus('csv', str(tmp_path / 'corpus'), 40, 'retrieval', 16)

  def job(*flags):
    args = retrieval.parse(['--workdir', str(run_copy), '--dataset', spec,
                            '--step', '6', '--batch_size', '64', *flags])
    outputs, evaluate = retrieval.make_job(args)
    return outputs, evaluate(6)[1]

  plain, plain_m = job()
  qb, qb_m = job('--hubness', 'qb_norm', '--query_bank', 'shapes:zeroshot',
                 '--query_bank_size', '30')
  binary, binary_m = job('--binary', '16', '--binary_rerank', '20')
  assert len({plain.folder, qb.folder, binary.folder}) == 3
  record = json.loads(open(qb.path(6)).read())['settings']['hubness']
  assert record['method'] == 'qb_norm' and record['bank_size'] == 30 and record['k'] == 1
  for m in (plain_m, qb_m, binary_m):
    assert m['num_captions'] == 40 and 0 <= m['image_retrieval_recall@1'] <= 1
    assert isinstance(m['image_retrieval_hubness@10'], float)
    assert isinstance(m['text_retrieval_hubness@10'], float)
  with pytest.raises(ConfigError, match='needs --query_bank'):
    job('--hubness', 'inverted_softmax')
  assert variant_settings(retrieval.parse(['--workdir', 'w', '--dataset', 'd']), None) == {}


@pytest.mark.parametrize('kind, dataset', [('zeroshot', 'shapes:zeroshot'),
                                           ('retrieval', 'shapes:retrieval')])
def test_evals_during_training_equal_the_offline_job(run_copy, kind, dataset):
  rows = read_metrics(run_copy, evals=True)
  assert [r['step'] for r in rows] == [4, 6]  # eval.every=4, and the final step
  module = {'zeroshot': zeroshot, 'retrieval': retrieval}[kind]
  flags = ['--templates', 'shapes'] if kind == 'zeroshot' else []  # the run's eval.templates
  args = module.parse(['--workdir', str(run_copy), '--dataset', dataset, '--step', '4',
                       '--batch_size', '256', *flags])  # 256: the run's eval.batch_size
  offline = module.make_job(args)[1](4)[1]
  prefix = f'{kind}/{dataset.replace(":", "_")}/'
  during = {k[len(prefix):]: v for k, v in rows[0].items() if k.startswith(prefix)}
  expected = {k: v for k, v in offline.items() if k not in ('wall_s', 'confusion')}
  assert during == expected and len(during) >= 4
  assert not any(k.startswith(prefix) for k in read_metrics(run_copy)[1])  # not in train rows
  tb = {(step, tag): value for step, tag, value in tb_events(run_copy / 'tb')}
  for key in expected:  # TensorBoard writes '@' as '_' ('recall@1' -> 'recall_1')
    assert tb[4, prefix + key.replace('@', '_')] == np.float32(expected[key])

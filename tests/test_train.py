"""The trainer as users run it: fresh processes on 8 simulated devices."""

import os

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pretrain.runtime.checkpoint import restore_params
from pretrain.config.cli import load_saved_config
from pretrain.step.train_step import model_graphdef_and_shapes
from pretrain.runtime.logger import MetricsLogger
from tests.helpers import read_metrics, run_train, shared_compile_cache, tb_events

FAST = ['--config.model.image_size=16', '--config.model.context_length=12',
        '--config.batch_size=32', '--config.optim.warmup_steps=2', '--config.log_every=1']


def _params(workdir, step):
  config = load_saved_config(os.path.join(workdir, 'config.json'))
  _, shapes = model_graphdef_and_shapes(config)
  one = NamedSharding(jax.sharding.Mesh(jax.devices()[:1], ('x',)), P())
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=one), shapes)
  return restore_params(str(workdir), step, abstract)[1]


def test_resume_is_bit_identical(tmp_path):
  common = [*FAST, '--config.total_steps=8', '--config.checkpoint_every=4',
            '--config.mesh.fsdp=2', '--config.eval.every=4',
            '--config.eval.zeroshot=shapes:zeroshot?size=96']  # every class twice: a quick eval
  straight, split = tmp_path / 'straight', tmp_path / 'split'
  assert run_train(straight, *common).returncode == 0
  first = run_train(split, *common, '--config.exit_after_step=4')
  assert first.returncode == 0 and 'exit_after_step=4: checkpointed step 4' in first.stdout
  second = run_train(split, *common)
  assert second.returncode == 0 and 'resumed from' in second.stdout
  # The start-up block (pretrain/runtime/startup.py), then the compile, then the steps.
  for result, start in ((first, 'fresh (step 0)'), (second, 'resumed from step 4')):
    lines = result.stdout.splitlines()
    begin = lines.index(f'run: {split}')
    block = lines[begin:begin + 7]
    given = common + (['--config.exit_after_step=4'] if result is first else [])
    assert block[1] == 'config: configs/demo.py, variant (default); overrides: ' + ' '.join(
        a[len('--config.'):] for a in given + shared_compile_cache(given))
    assert block[2:4] == [
        f'start: {start}; total_steps 8',
        'devices: 1 process(es) x 8 cpu device(s) = 8; mesh data=4 x fsdp=2 (axes data, fsdp)']
    assert block[4].startswith('parameters: image ') and block[4].endswith(')')
    assert block[5:] == ['batch: global 32, per device 4 (batch split 8 ways)',
                         'data: shapes:train -> shapes_train: 200000 samples']
    compiling = lines.index('compiling the train step...')
    assert begin + 7 <= compiling < min(i for i, l in enumerate(lines) if l.startswith('step '))
    compiled = lines[compiling + 1]
    assert compiled.startswith('compiled in ') and compiled.endswith(' s'), compiled
  rows_a, rows_b = read_metrics(straight), read_metrics(split)
  assert [r['step'] for r in rows_b] == list(range(1, 9))
  # Evaluated at the same steps, with the same results, stopped at step 4 and resumed or not.
  evals_a, evals_b = read_metrics(straight, evals=True), read_metrics(split, evals=True)
  assert [r['step'] for r in evals_b] == [4, 8] and evals_a == evals_b
  for a, b in zip(rows_a, rows_b):
    assert a['batch_crc32'] == b['batch_crc32'] and a['loss'] == b['loss'], (a, b)
  pa, pb = _params(straight, 8), _params(split, 8)
  same = jax.tree.map(lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)), pa, pb)
  assert all(jax.tree.leaves(same))
  again = run_train(split, *common)
  assert again.returncode == 0 and 'already finished' in again.stdout


def test_demo_config_learns(tmp_path):
  result = run_train(tmp_path, '--config.total_steps=36', '--config.log_every=4',
                     '--config.checkpoint_every=18', '--config.optim.warmup_steps=4')
  assert result.returncode == 0, result.stderr[-2000:]
  losses = [r['loss'] for r in read_metrics(tmp_path)]
  assert np.mean(losses[-2:]) < 0.8 * losses[0]
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['18', '36']
  config = load_saved_config(str(tmp_path / 'config.json'))
  assert config.total_steps == 36 and config.optim.warmup_steps == 4
  assert (tmp_path / 'tokenizer.json').is_file()
  line = [l for l in result.stdout.splitlines() if l.startswith('zeroshot shapes_zeroshot')][0]
  assert line.startswith('zeroshot shapes_zeroshot step 36: acc1 '), line
  acc1 = float(line.split('acc1 ')[1].split()[0])
  assert acc1 > 3 / 48, line  # 48 classes: chance is 0.021
  # The final zero-shot is a row of metrics.jsonl and TensorBoard scalars, tagged as the eval job's.
  [row] = read_metrics(tmp_path, evals=True)
  assert row['step'] == 36 and round(row['zeroshot/shapes_zeroshot/acc1'], 4) == acc1, row
  assert row['zeroshot/shapes_zeroshot/num_examples'] == 960
  tb = {(step, tag): value for step, tag, value in tb_events(tmp_path / 'tb')}
  assert tb[36, 'zeroshot/shapes_zeroshot/acc1'] == np.float32(row['zeroshot/shapes_zeroshot/acc1'])


def test_batch_crc32_reaches_tensorboard_exactly(tmp_path):
  # float32 holds 1622306901 as 1622306944: a checksum logged as a scalar would be wrong.
  logger = MetricsLogger(str(tmp_path), total_steps=10)
  logger.write(3, {'loss': 1.5, 'batch_crc32': 1622306901, 'skipped_updates': 0})
  logger.close()
  assert read_metrics(tmp_path) == [
      {'step': 3, 'loss': 1.5, 'batch_crc32': 1622306901, 'skipped_updates': 0}]
  events = tb_events(tmp_path / 'tb')
  assert (3, 'batch_crc32/text_summary', '1622306901') in events
  assert [tag for _, tag, _ in events if tag.startswith('batch_crc32')] == [
      'batch_crc32/text_summary']
  assert (3, 'loss', 1.5) in events and (3, 'skipped_updates', 0.0) in events


@pytest.mark.parametrize('override, message', [
    ('--config.batch_size=12', 'batch_size 12 is not divisible by the data-parallel size 8'),
    ('--config.model.variant=huge', "unknown model variant 'huge'"),
    ('--config.mesh.data=3', 'mesh'),
    ('--config.optim.lr=0', 'optim.lr must be positive'),
    ('--config.data.train=nope:x', "unknown data kind 'nope'"),
    ('--config.data.tokenizer=hf:/no/such/tokenizer.json', 'does not exist'),
    ('--config.model.vocab_size=10', 'model.vocab_size is 10'),
    ('--config.optim.warmup_steps=500', 'is not shorter than the run'),
    ('--config.bogus=1', 'unknown config field --config.bogus'),
    ('--config.loss.name=hinge', "unknown loss.name 'hinge'"),
    ('--config.loss.impl=ring', "unknown loss.impl 'ring' for softmax"),
    ('--config.data.train=csv:/no/such/file.csv', 'csv data path /no/such/file.csv does not exist'),
    ('--config.data.on_bad_record=ignore', "unknown data.on_bad_record 'ignore'"),
    ('--config.keep_checkpoints=0', 'keep_checkpoints must be at least 1, got 0'),
    ('--config.model.image_mean=0.1,0.2', 'model.image_mean must have 3 values, got 2'),
    ('--config.batch_size=0', 'batch_size must be positive, got 0'),
    ('--config.seed=-1', 'seed must be at least 0 and at most 4294967295, got -1'),
    ('--config.model.context_length=0', 'model.context_length must be at least 2, got 0'),
    ('--config.optim.b2=1.5', 'optim.b2 must be at least 0.0 and below 1.0, got 1.5'),
    ('--config.eval.tasks=zeroshot=csv:/no/such.csv',
     'eval task zeroshot=csv:/no/such.csv: csv data path /no/such.csv does not exist'),
])
def test_bad_config_is_one_line_before_compiling(tmp_path, override, message):
  result = run_train(tmp_path / 'w', override)
  assert result.returncode == 2
  lines = [l for l in result.stderr.splitlines() if l.strip() and 'warn' not in l.lower()]
  assert len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0], result.stderr
  assert not (tmp_path / 'w' / 'checkpoints').exists()


@pytest.fixture(scope='module')
def built_corpora(tmp_path_factory):
  from data.make_corpus import write_corpus
  root = tmp_path_factory.mktemp('corpora')
  return {fmt: write_corpus(fmt, str(root / fmt), 96, 'train', 16, per_shard=40)
          for fmt in ('csv', 'wds')}


@pytest.mark.parametrize('fmt', ['csv', 'wds'])
def test_trains_on_a_built_corpus(tmp_path, built_corpora, fmt):
  result = run_train(tmp_path, f'--config.data.train={built_corpora[fmt]}', *FAST,
                     '--config.total_steps=4', '--config.eval.zeroshot=')
  assert result.returncode == 0, result.stderr[-2000:]
  assert len(read_metrics(tmp_path)) == 4
  if fmt == 'wds':
    assert len(os.listdir(tmp_path / 'data_index')) == 3  # one cached index per shard
    assert ('data: 96 samples in 3 shard files; bad shards: none; process 0 of 1 reads rows 0..'
            in result.stdout)


def test_bad_record_policies_through_the_trainer(tmp_path):
  from tests.corpora import csv_with_bad_records
  path, expected = csv_with_bad_records(str(tmp_path / 'data'), good=24, max_pixels=64 * 64)
  common = [f'--config.data.train=csv:{path}', '--config.data.max_pixels=4096', *FAST,
            '--config.data.max_unknown_token_rate=1',  # its captions are not shapes words
            '--config.batch_size=32', '--config.eval.zeroshot=']
  skip = run_train(tmp_path / 'skip', *common, '--config.total_steps=3')
  assert skip.returncode == 0, skip.stderr[-2000:]
  # 32 rows = one batch per epoch, so 3 steps read every bad record exactly 3 times.
  rows = read_metrics(tmp_path / 'skip')
  assert [r['bad_records'] for r in rows] == [8, 16, 24]
  assert {k[len('bad_records/'):]: v for k, v in rows[-1].items()
          if k.startswith('bad_records/')} == {k: 3 * n for k, n in expected.items()}
  assert 'skipped 24 bad' in skip.stdout
  assert skip.stderr.count('warning: skipping bad record') == 8  # each logged once
  error = run_train(tmp_path / 'error', *common, '--config.total_steps=3',
                    '--config.data.on_bad_record=error', '--config.data.num_threads=1')
  lines = [l for l in error.stderr.splitlines() if l.startswith('error: ')]
  assert error.returncode == 1 and len(lines) == 1
  assert 'bad record in bad.csv, key row' in lines[0]


def _one_error_line(result) -> str:
  lines = [l for l in result.stderr.splitlines() if l.strip() and 'warn' not in l.lower()]
  assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr[-3000:]
  return lines[0]


def test_data_that_cannot_train_is_one_line(tmp_path):
  data = tmp_path / 'data'
  data.mkdir()
  (data / 'header.csv').write_text('image,caption\n')
  (data / 'gone.csv').write_text('image,caption\n' + ''.join(
      f'missing{i}.png,a red circle\n' for i in range(50)))
  empty = run_train(tmp_path / 'empty', f'--config.data.train=csv:{data / "header.csv"}', *FAST)
  assert empty.returncode == 2
  assert 'the training data header.csv has no records' in _one_error_line(empty)
  gone = run_train(tmp_path / 'gone', f'--config.data.train=csv:{data / "gone.csv"}', *FAST,
                   '--config.data.num_threads=1')
  assert gone.returncode == 1
  assert 'every record of gone.csv is bad' in _one_error_line(gone)


def test_a_tokenizer_that_does_not_fit_the_data_is_refused(tmp_path):
  from PIL import Image
  data = tmp_path / 'data'
  data.mkdir()
  rows = []
  for i in range(32):  # captioned as a handwritten-digits corpus would be
    Image.new('RGB', (16, 16), (8 * i, 0, 0)).save(data / f'{i}.png')
    rows.append(f'{i}.png,a handwritten digit seven.')
  (data / 'digits.csv').write_text('\n'.join(['image,caption'] + rows) + '\n')
  result = run_train(tmp_path / 'w', f'--config.data.train=csv:{data / "digits.csv"}', *FAST)
  assert result.returncode == 2
  line = _one_error_line(result)
  assert 'tokenizer shapes maps 60.0% of the tokens of 32 sampled captions of digits.csv' in line
  assert 'sentencepiece' in line and 'max_unknown_token_rate' in line, line
  assert not (tmp_path / 'w' / 'config.json').exists()

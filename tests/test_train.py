"""The trainer as users run it: fresh processes on 8 simulated devices."""

import os

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pretrain.checkpoint import restore_params
from pretrain.config_cli import load_saved_config
from pretrain.train_step import model_graphdef_and_shapes
from tests.helpers import read_metrics, run_train

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
            '--config.mesh.fsdp=2']
  straight, split = tmp_path / 'straight', tmp_path / 'split'
  assert run_train(straight, *common).returncode == 0
  first = run_train(split, *common, '--config.exit_after_step=4')
  assert first.returncode == 0 and 'checkpointed and stopped' in first.stdout
  second = run_train(split, *common)
  assert second.returncode == 0 and 'resumed from' in second.stdout
  rows_a, rows_b = read_metrics(straight), read_metrics(split)
  assert [r['step'] for r in rows_b] == list(range(1, 9))
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
  line = [l for l in result.stdout.splitlines() if l.startswith('zero-shot')][0]
  acc1 = float(line.split('acc1 ')[1].split()[0])
  assert acc1 > 3 / 48, line  # 48 classes: chance is 0.021


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
])
def test_bad_config_is_one_line_before_compiling(tmp_path, override, message):
  result = run_train(tmp_path / 'w', override)
  assert result.returncode == 2
  lines = [l for l in result.stderr.splitlines() if l.strip() and 'warn' not in l.lower()]
  assert len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0], result.stderr
  assert not (tmp_path / 'w' / 'checkpoints').exists()

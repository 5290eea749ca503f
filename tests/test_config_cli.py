"""Command-line config loading: overrides reach the config, mistakes are one-line errors."""

import pytest

from pretrain.config.cli import parse_args
from data.errors import ConfigError


def test_overrides_reach_the_config():
  config, flags = parse_args(['--config', 'configs/demo.py', '--workdir', '/tmp/x',
                              '--config.total_steps=7', '--config.mesh.fsdp=2',
                              '--config.optim.lr=3e-4', '--config.model.image_pool=gap',
                              '--config.data.flip=true', '--config.model.image_mean=(0.1,0.2,0.3)'])
  assert flags['workdir'] == '/tmp/x'
  assert config.total_steps == 7 and config.mesh.fsdp == 2
  assert config.optim.lr == 3e-4 and config.model.image_pool == 'gap'
  assert config.data.flip is True and tuple(config.model.image_mean) == (0.1, 0.2, 0.3)


def test_named_variant():
  config, _ = parse_args(['--config', 'configs/demo.py:tiny', '--workdir', '/tmp/x'])
  assert config.model.variant == 'tiny' and config.model.image_size == 64


@pytest.mark.parametrize('args, message', [
    (['--config.total_step=3'], r'unknown config field --config.total_step; did you mean total_steps'),
    (['--config.batch_size=abc'], 'expected a int'),
    (['--config.mesh=3'], 'is a group'),
    (['--config.data.flip=maybe'], 'expected true or false'),
    (['--set', 'model.dtype=bfloat16'],
     r'unknown flag --set; expected --config, --workdir, --config.FIELD=VALUE'),
])
def test_bad_overrides(args, message):
  with pytest.raises(ConfigError, match=message):
    parse_args(['--config', 'configs/demo.py', '--workdir', '/tmp/x', *args])


def test_missing_config_file_and_variant():
  with pytest.raises(ConfigError, match='does not exist'):
    parse_args(['--config', 'configs/nope.py', '--workdir', '/tmp/x'])
  with pytest.raises(ConfigError, match="unknown variant 'huge'"):
    parse_args(['--config', 'configs/demo.py:huge', '--workdir', '/tmp/x'])
  with pytest.raises(ConfigError, match='--workdir is required'):
    parse_args(['--config', 'configs/demo.py'])


@pytest.mark.parametrize('override, message', [
    ('--config.accum_steps=3', 'batch_size 128 is not divisible by the data-parallel size 8 x '
                               'accum_steps 3'),
    ('--config.accum_steps=0', 'accum_steps must be >= 1, got 0'),
    ('--config.model.text_remat=some', "unknown model.text_remat 'some'; known: none, full, dots"),
    ('--config.loss.tile=0', 'loss.tile must be positive, got 0'),
    ('--config.tower_batch_chunks=3', 'tower_batch_chunks 3 does not divide the per-device batch '
                                      '16 (batch_size 128 / data-parallel size 8 / accum_steps 1)'),
    ('--config.tower_batch_chunks=-1', 'tower_batch_chunks must be >= 0 (0 = auto), got -1'),
    ('--config.batch_size=12', "batch_size 12 is not divisible by the data-parallel size 8 "
                               "(mesh {'data': 8, 'fsdp': 1})"),
    ('--config.model.image_pool=avg', "unknown model.image_pool 'avg'; known: cls, gap, map"),
    ('--config.model.text_pool=last',
     "unknown model.text_pool 'last'; known: eot, cls, argmax, eos_id"),
    ('--config.data.on_bad_record=ignore', "unknown data.on_bad_record 'ignore'; known: skip, error"),
])
def test_scale_fields_are_checked_in_one_line(override, message):
  from pretrain.config.validate import check_training
  config, _ = parse_args(['--config', 'configs/demo.py', '--workdir', '/tmp/x', override])
  with pytest.raises(ConfigError) as error:
    check_training(config, num_devices=8, num_processes=1)
  assert str(error.value) == message


def test_list_fields_take_comma_separated_strings():
  from pretrain.config.cli import parse_args
  config, _ = parse_args(['--config', 'configs/demo.py', '--workdir', '/tmp/x',
                          '--config.freeze=img/.*,txt/proj/.*', "--config.init_from_include=('img/.*',)"])
  assert tuple(config.freeze) == ('img/.*', 'txt/proj/.*')
  assert tuple(config.init_from_include) == ('img/.*',)

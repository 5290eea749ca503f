"""`config.deterministic`: XLA's deterministic-GPU flags, set only for a GPU and before jax starts."""

import subprocess
import sys

import pytest

from configs.common import base_config
from data.errors import ConfigError
from pretrain.backends import (DETERMINISTIC_GPU_FLAGS, check_xla_flags, deterministic_xla_flags,
                               set_xla_flags, will_run_on_gpu, with_xla_flags)
from tests.conftest import ROOT

GPU_FLAGS = ('--xla_gpu_deterministic_ops=true', '--xla_gpu_exclude_nondeterministic_ops=true')


@pytest.mark.parametrize('platform, deterministic, flags', [
    ('gpu', True, GPU_FLAGS), ('cuda', True, GPU_FLAGS), ('gpu', False, ()), ('cpu', True, ()),
    ('tpu', True, ())])
def test_flags_for_each_platform(platform, deterministic, flags):
  assert deterministic_xla_flags(platform, deterministic) == flags


def test_flags_join_what_the_user_set():
  joined = with_xla_flags('--xla_force_host_platform_device_count=8', DETERMINISTIC_GPU_FLAGS)
  assert joined.split() == ['--xla_force_host_platform_device_count=8', *GPU_FLAGS]
  # A flag the user set keeps the user's value.
  assert with_xla_flags('--xla_gpu_deterministic_ops=false', GPU_FLAGS).split() == [
      '--xla_gpu_deterministic_ops=false', GPU_FLAGS[1]]
  assert with_xla_flags('', ()) == ''


@pytest.mark.parametrize('environ, modules, devices, gpu', [
    ({'JAX_PLATFORMS': 'cuda'}, (), (), True), ({'JAX_PLATFORMS': 'cpu'}, ('jax_cuda12_plugin',),
                                                 ('/dev/nvidia0',), False),
    ({'JAX_PLATFORMS': 'tpu'}, (), (), False), ({}, ('jax_cuda12_plugin',), (), True),
    ({}, (), ('/dev/nvidia0',), True), ({}, ('libtpu',), ('/dev/accel0',), False), ({}, (), (), False)])
def test_gpu_is_recognised_before_jax_starts(environ, modules, devices, gpu):
  found = will_run_on_gpu(environ, lambda name: object() if name in modules else None,
                          lambda path: path in devices)
  assert found is gpu


def test_set_xla_flags_only_for_gpu_and_only_when_asked():
  config = base_config()
  environ = {'JAX_PLATFORMS': 'cuda', 'XLA_FLAGS': '--a=1'}
  assert set_xla_flags(config, environ) == () and environ['XLA_FLAGS'] == '--a=1'
  config.deterministic = True
  assert set_xla_flags(config, environ) == GPU_FLAGS
  assert environ['XLA_FLAGS'].split() == ['--a=1', *GPU_FLAGS]
  check_xla_flags(config, 'gpu', environ)  # set: no error
  cpu = {'JAX_PLATFORMS': 'cpu'}
  assert set_xla_flags(config, cpu) == () and 'XLA_FLAGS' not in cpu
  check_xla_flags(config, 'cpu', cpu)
  with pytest.raises(ConfigError, match='deterministic=True on gpu needs XLA_FLAGS'):
    check_xla_flags(config, 'gpu', {'XLA_FLAGS': '--a=1'})


def test_the_trainer_sets_flags_before_jax_starts():
  """parse_args (what runs before set_xla_flags in pretrain.train.main) starts no jax backend."""
  code = ('import sys; from pretrain.config.cli import parse_args; from jax._src import xla_bridge\n'
          "parse_args(['--config', 'configs/demo.py', '--workdir', '/tmp/x', "
          "'--config.deterministic=true'], usage='')\n"
          'print(xla_bridge.backends_are_initialized())')
  result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.split()[-1] == 'False'

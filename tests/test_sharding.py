"""Mesh resolution and parameter placement rules."""

import pytest
from jax.sharding import PartitionSpec as P

from data.errors import ConfigError
from pretrain.parallel.sharding import param_spec, resolve_mesh_shape


def test_mesh_minus_one_takes_the_rest():
  assert resolve_mesh_shape({'data': -1, 'fsdp': 2}, 8) == {'data': 4, 'fsdp': 2}
  assert resolve_mesh_shape({'data': 2, 'fsdp': -1}, 8) == {'data': 2, 'fsdp': 4}
  assert resolve_mesh_shape({'data': 8, 'fsdp': 1}, 8) == {'data': 8, 'fsdp': 1}


@pytest.mark.parametrize('sizes, message', [
    ({'data': 3, 'fsdp': 1}, 'has 3 devices, but there are 8'),
    ({'data': -1, 'fsdp': 3}, 'not divisible by 3'),
    ({'data': -1, 'fsdp': -1}, 'at most one -1'),
    ({'data': 8, 'model': 1}, 'unknown mesh axes'),
])
def test_mesh_errors(sizes, message):
  with pytest.raises(ConfigError, match=message):
    resolve_mesh_shape(sizes, 8)


def test_fsdp_shards_largest_divisible_dimension():
  assert param_spec((512, 2048), 4, 'fsdp', 0) == P(None, 'fsdp')
  assert param_spec((2048, 512), 4, 'fsdp', 0) == P('fsdp', None)
  assert param_spec((6, 4096), 4, 'fsdp', 0) == P(None, 'fsdp')
  assert param_spec((6, 10), 4, 'fsdp', 0) == P()  # nothing divisible
  assert param_spec((512, 2048), 4, 'fsdp', 2**21) == P()  # below the size threshold
  assert param_spec((512, 2048), 4, 'replicate', 0) == P()
  assert param_spec((512, 2048), 1, 'fsdp', 0) == P()


# Compiles the demo's train step on each 2-D mesh given as argv ('2x4 4x2'); prints one line each.
_COMPILE_ON_MESHES = '''
import sys
import jax
from configs.demo import get_config
from pretrain.step.lowering import abstract_batch, step_builder
from tests.helpers import mesh
config = get_config()
for shape in sys.argv[1:]:
  data, fsdp = map(int, shape.split('x'))
  the_mesh = mesh(data, fsdp)
  builder = step_builder(config, the_mesh, 'cpu')
  builder.jit_step().trace(builder.abstract_state, abstract_batch(config, the_mesh)).lower().compile()
  print('compiled', shape, flush=True)
'''


def test_step_compiles_on_2d_meshes_without_involuntary_resharding():
  """XLA's SPMD partitioner reports a sharding it can only reach by replicating a tensor in full
  on stderr, from C++ (so a subprocess): the demo's step on data x fsdp meshes must have none."""
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=8')
  result = subprocess.run([sys.executable, '-c', _COMPILE_ON_MESHES, '2x4', '4x2'], cwd=root,
                          env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split('\n')[:-1] == ['compiled 2x4', 'compiled 4x2']
  remats = [line for line in result.stderr.splitlines() if 'Involuntary full rematerialization' in line]
  assert remats == []

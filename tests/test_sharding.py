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

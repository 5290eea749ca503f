"""The full model loss and parameter gradients are the same on 1 device and on 8-device meshes."""

import jax
import pytest

from pretrain.plan import compile_step, step_flops
from tests.helpers import loss_and_grads, max_tree_diff, mesh, random_batch, step_builder, tiny_config


@pytest.fixture(scope='module')
def single_device_result():
  config = tiny_config()
  batch = random_batch(config, 16)
  return batch, loss_and_grads(config, mesh(1, 1), batch)


@pytest.mark.parametrize('shape', [(8, 1), (4, 2), (2, 4)])
def test_loss_and_grads_equal_across_meshes(shape, single_device_result):
  batch, (ref_loss, _, ref_grads) = single_device_result
  loss, _, grads = loss_and_grads(tiny_config(), mesh(*shape), batch)
  assert abs(loss - ref_loss) <= 1e-6
  assert max_tree_diff(grads, ref_grads) <= 1e-5


def test_fsdp_actually_shards_parameters():
  builder = step_builder(tiny_config(), mesh(2, 4))
  specs = [s.spec for s in jax.tree.leaves(builder.state_shardings.params)]
  assert any('fsdp' in tuple(spec) for spec in specs)
  opt_specs = [s.spec for s in jax.tree.leaves(builder.state_shardings.opt_state)]
  assert any('fsdp' in tuple(spec) for spec in opt_specs)


def _step_flops_per_device(shape) -> float:
  config = tiny_config()
  config.batch_size = 64
  return step_flops(compile_step(config, mesh(*shape))[1])


def test_fsdp_does_not_replicate_activations():
  """Sharding parameters over fsdp must not make a device do more of the model's work:
  activations stay split over the batch (GSPMD would otherwise replicate them)."""
  assert _step_flops_per_device((2, 4)) <= 1.02 * _step_flops_per_device((8, 1))

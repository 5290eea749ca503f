"""The full model loss and parameter gradients are the same on 1 device and on 8-device meshes."""

import jax
import numpy as np
import pytest

from pretrain.optim import make_optimizer
from pretrain.sharding import batch_sharding
from pretrain.train_step import StepBuilder
from data.records import BAD_KINDS
from tests.helpers import mesh, random_batch, step_builder, tiny_config


def _batch(config, n):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n, config.model.image_size, config.model.image_size, 3), np.uint8)
  text = rng.integers(3, 40, (n, config.model.context_length)).astype(np.int32)
  text[:, -2] = 2
  text[:, -1] = 0
  return {'image': images, 'text': text}


def _loss_and_grads(config, the_mesh, batch):
  tx, schedule = make_optimizer(config.optim, config.total_steps)
  builder = StepBuilder(config, the_mesh, tx, schedule)
  state = builder.init_state()
  sharded = {k: jax.device_put(v, batch_sharding(the_mesh)) for k, v in batch.items()}
  fn = jax.jit(jax.value_and_grad(builder.loss_and_metrics, has_aux=True))
  (loss, metrics), grads = fn(state['params'], sharded)
  return float(loss), jax.device_get(grads)


@pytest.fixture(scope='module')
def single_device_result():
  config = tiny_config()
  batch = _batch(config, 16)
  return batch, _loss_and_grads(config, mesh(1, 1), batch)


@pytest.mark.parametrize('shape', [(8, 1), (4, 2), (2, 4)])
def test_loss_and_grads_equal_across_meshes(shape, single_device_result):
  batch, (ref_loss, ref_grads) = single_device_result
  config = tiny_config()
  loss, grads = _loss_and_grads(config, mesh(*shape), batch)
  assert abs(loss - ref_loss) <= 1e-6
  diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), grads, ref_grads)
  assert max(jax.tree.leaves(diffs)) <= 1e-5


def test_fsdp_actually_shards_parameters():
  config = tiny_config()
  tx, schedule = make_optimizer(config.optim, config.total_steps)
  builder = StepBuilder(config, mesh(2, 4), tx, schedule)
  specs = [s.spec for s in jax.tree.leaves(builder.state_shardings['params'])]
  assert any('fsdp' in tuple(spec) for spec in specs)
  opt_specs = [s.spec for s in jax.tree.leaves(builder.state_shardings['opt_state'])]
  assert any('fsdp' in tuple(spec) for spec in opt_specs)


def _step_flops_per_device(shape) -> float:
  config = tiny_config()
  config.batch_size = 64
  builder = step_builder(config, mesh(*shape))
  rows = batch_sharding(builder.mesh)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=rows)
           for k, v in random_batch(config, 64).items()}
  batch['bad'] = jax.ShapeDtypeStruct((64, len(BAD_KINDS)), np.int32, sharding=rows)
  compiled = builder.jit_step().lower(builder.abstract_state, batch).compile()
  return float(compiled.cost_analysis()['flops'])


def test_fsdp_does_not_replicate_activations():
  """Sharding parameters over fsdp must not make a device do more of the model's work:
  activations stay split over the batch (GSPMD would otherwise replicate them)."""
  assert _step_flops_per_device((2, 4)) <= 1.02 * _step_flops_per_device((8, 1))

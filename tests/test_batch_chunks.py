"""Towers over slices of each device's batch give the whole batch's embeddings, loss and grads."""

import re

import jax
import numpy as np
import pytest

from pretrain.backends.cpu.tower_slices import map_over_chunks, resolve_chunks
from pretrain.parallel.sharding import batch_sharding
from tests.helpers import loss_and_grads, max_tree_diff, mesh, random_batch, step_builder, tiny_config


@pytest.mark.parametrize('setting, per_device, fsdp, expected', [
    (0, 256, False, 4), (0, 32, False, 2), (0, 48, False, 2), (0, 16, False, 1), (8, 256, False, 8),
    (0, 256, True, 1), (3, 12, True, 3), (1, 256, False, 1)])
def test_auto_slices_only_without_fsdp_and_keeps_16_examples_per_slice(
    setting, per_device, fsdp, expected):
  """The CPU rule; off the CPU resolve_for_platform sets one slice (tests/test_backends.py)."""
  assert resolve_chunks(setting, per_device, fsdp) == expected


def test_auto_is_off_where_the_parameters_are_actually_sharded():
  config = tiny_config()  # auto; 64 examples per device
  assert step_builder(config, mesh(8, 1)).tower_chunks(8 * 64) == 4
  assert step_builder(config, mesh(2, 4)).tower_chunks(8 * 64) == 1  # FSDP shards the weights
  config.param_sharding = 'replicate'  # an fsdp axis that shards nothing
  assert step_builder(config, mesh(2, 4)).tower_chunks(8 * 64) == 4


def test_each_slice_takes_rows_from_every_device_and_the_order_comes_back():
  rows = np.arange(24)[:, None] * np.ones((1, 3))  # 4 devices x 6 rows, 3 slices of 2 per device
  seen = []

  def record(x):
    seen.append(np.asarray(x[:, 0]).astype(int).tolist())
    return x * 10

  out = map_over_chunks(record, jax.numpy.asarray(rows), chunks=3, shards=4)
  np.testing.assert_array_equal(out, rows * 10)
  assert seen == [[0, 1, 6, 7, 12, 13, 18, 19], [2, 3, 8, 9, 14, 15, 20, 21],
                  [4, 5, 10, 11, 16, 17, 22, 23]]
  with pytest.raises(ValueError, match='does not split into 5 slices on each of 4 devices'):
    map_over_chunks(record, jax.numpy.asarray(rows), chunks=5, shards=4)


def _embeddings(config, the_mesh, batch, params):
  builder = step_builder(config, the_mesh)
  sharded = {k: jax.device_put(v, batch_sharding(the_mesh)) for k, v in batch.items()}
  return jax.device_get(jax.jit(builder.embed)(params, sharded['image'], sharded['text']))


def test_sliced_towers_equal_the_whole_batch():
  """On a 2 x 4 FSDP mesh; one device is covered by the BatchNorm test's text tower below."""
  config = tiny_config()
  config.batch_size = 64  # 8 per device on the 2 x 4 mesh: 4 slices of 2
  config.tower_batch_chunks = 1
  the_mesh = mesh(2, 4)
  batch = random_batch(config, 64)
  params = step_builder(config, the_mesh).init_state()['params']
  whole = _embeddings(config, the_mesh, batch, params)
  ref_loss, _, ref_grads = loss_and_grads(config, the_mesh, batch, params)
  config.tower_batch_chunks = 4
  sliced = _embeddings(config, the_mesh, batch, params)
  loss, _, grads = loss_and_grads(config, the_mesh, batch, params)
  assert max_tree_diff(sliced, whole) <= 1e-6  # same rows in the same order
  assert abs(loss - ref_loss) <= 1e-6
  assert max_tree_diff(grads, ref_grads) <= 1e-5


def _collectives(config, the_mesh) -> dict:
  builder = step_builder(config, the_mesh)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding(the_mesh))
           for k, v in random_batch(config, config.batch_size).items()}
  text = jax.jit(builder.loss_and_grads).lower(builder.abstract_state['params'], batch).compile().as_text()
  kinds = ('all-to-all', 'collective-permute', 'all-gather', 'all-reduce', 'reduce-scatter')
  return {kind: len(re.findall(rf'= \S+ {kind}(?:-start)?\(', text)) for kind in kinds}


def test_slices_move_no_examples_between_devices():
  config = tiny_config()
  config.batch_size = 64
  config.tower_batch_chunks = 1
  whole = _collectives(config, mesh(8, 1))
  config.tower_batch_chunks = 4
  sliced = _collectives(config, mesh(8, 1))
  assert sliced['all-to-all'] == whole['all-to-all'] == 0
  assert sliced['collective-permute'] == whole['collective-permute']
  assert sliced['all-gather'] == whole['all-gather']


def test_batchnorm_image_towers_keep_the_whole_batch():
  """Slices would give BatchNorm per-slice statistics: the EfficientNet tower is never sliced."""
  from configs.align import get_config
  config = get_config('tiny')
  config.model.image_size, config.batch_size = 16, 16
  the_mesh = mesh(1, 1, jax.devices()[:1])
  batch = random_batch(config, 16)
  params = jax.device_get(step_builder(config, the_mesh).init_state()['params'])
  results = []
  for chunks in (1, 2):
    config.tower_batch_chunks = chunks
    builder = step_builder(config, the_mesh)
    results.append(jax.device_get(jax.jit(builder.embed_and_stats)(
        params, batch['image'], batch['text'], jax.random.key(0))))
  (img1, txt1, stats1), (img2, txt2, stats2) = results
  assert builder.tower_chunks(16) == 2  # the text tower is sliced
  assert max_tree_diff(stats1, stats2) == 0.0
  assert max_tree_diff(img1, img2) == 0.0
  assert max_tree_diff(txt1, txt2) <= 1e-6

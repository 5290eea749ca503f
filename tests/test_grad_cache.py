"""Gradient caching (accum_steps) gives the full-batch gradients with less activation memory."""

import jax
import numpy as np
import pytest

from pretrain.parallel.batch_slices import join_rows, split_rows
from pretrain.step.grad_cache import join_micro, split_micro
from tests.helpers import (loss_and_grads, loss_and_grads_temp_bytes, max_tree_diff, mesh,
                           random_batch, tiny_config)


@pytest.mark.parametrize('shape, steps, loss_name', [((4, 2), 2, 'softmax'), ((8, 1), 4, 'sigmoid')])
def test_cached_gradients_equal_full_batch(shape, steps, loss_name):
  config = tiny_config()
  config.batch_size = 32
  config.loss.name = loss_name
  batch = random_batch(config, 32)
  full = loss_and_grads(config, mesh(*shape), batch)
  config.accum_steps = steps
  cached = loss_and_grads(config, mesh(*shape), batch)
  assert abs(full[0] - cached[0]) <= 1e-6
  for key in ('acc_i2t', 'acc_t2i'):
    assert float(full[1][key]) == float(cached[1][key])
  assert max_tree_diff(full[2], cached[2]) <= 1e-5
  assert max(float(np.max(np.abs(g))) for g in jax.tree.leaves(full[2])) > 1e-3  # not all zero


def test_cached_step_needs_less_temporary_memory():
  """XLA's own account of the compiled step: accum_steps=8 keeps fewer activations."""
  temp = {}
  for steps in (1, 8):
    config = tiny_config()
    config.batch_size, config.accum_steps = 256, steps
    temp[steps] = loss_and_grads_temp_bytes(config, mesh(1, 1))
  assert temp[8] < 0.4 * temp[1], temp


def test_micro_batches_take_rows_from_every_device_and_the_order_comes_back():
  """The one slicing helper gradient caching shares with the CPU tower slices."""
  rows = np.arange(24)  # 4 devices x 6 rows, 3 micro-batches of 2 rows per device
  expected = [[0, 1, 6, 7, 12, 13, 18, 19], [2, 3, 8, 9, 14, 15, 20, 21],
              [4, 5, 10, 11, 16, 17, 22, 23]]
  assert np.asarray(split_rows(rows, 3, 4)).tolist() == expected
  np.testing.assert_array_equal(join_rows(split_rows(rows, 3, 4), 4), rows)
  the_mesh = mesh(4, 1)
  micro = jax.jit(lambda x: split_micro(x, 3, the_mesh))(rows)
  assert np.asarray(micro).tolist() == expected
  np.testing.assert_array_equal(jax.jit(lambda x: join_micro(x, the_mesh))(micro), rows)

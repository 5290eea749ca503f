"""Gradient caching (accum_steps) gives the full-batch gradients with less activation memory."""

import jax
import numpy as np
import pytest

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

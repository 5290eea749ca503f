"""The sharded local-rows loss equals the formula, on every mesh, with its gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pretrain.losses import make_softmax_loss, softmax_reference
from tests.helpers import mesh


def numpy_formula(img, txt, scale, smoothing):
  """Symmetric CE over B x B logits, written out in float64 numpy."""
  logits = scale * img.astype(np.float64) @ txt.astype(np.float64).T
  n = len(img)
  target = (1 - smoothing) * np.eye(n) + smoothing / n

  def ce(z):
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -(target * logp).sum(axis=1).mean()
  return 0.5 * (ce(logits) + ce(logits.T))


def unit_rows(key, n, d):
  x = jax.random.normal(key, (n, d))
  return x / jnp.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize('smoothing', [0.0, 0.1])
def test_reference_matches_numpy_formula(smoothing):
  k1, k2 = jax.random.split(jax.random.key(0))
  img, txt = unit_rows(k1, 24, 16), unit_rows(k2, 24, 16)
  loss, _ = softmax_reference(img, txt, jnp.float32(7.0), smoothing)
  expected = numpy_formula(np.asarray(img), np.asarray(txt), 7.0, smoothing)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('shape', [(1, 1), (8, 1), (4, 2), (2, 4)])
@pytest.mark.parametrize('smoothing', [0.0, 0.1])
def test_sharded_loss_and_grads_equal_reference(shape, smoothing):
  k1, k2 = jax.random.split(jax.random.key(1))
  img, txt = unit_rows(k1, 32, 16), unit_rows(k2, 32, 16)
  # Correlated pairs, so accuracies are neither 0 nor 1.
  txt = (txt + 0.5 * img) / jnp.linalg.norm(txt + 0.5 * img, axis=1, keepdims=True)
  scale = jnp.float32(10.0)
  loss_fn = make_softmax_loss(mesh(*shape), ('data', 'fsdp'), smoothing)

  def sharded(i, t, s):
    return loss_fn(i, t, s)

  (loss, metrics), grads = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1, 2), has_aux=True))(
      img, txt, scale)
  (ref_loss, ref_metrics), ref_grads = jax.value_and_grad(
      lambda i, t, s: softmax_reference(i, t, s, smoothing), argnums=(0, 1, 2), has_aux=True)(
          img, txt, scale)
  assert abs(float(loss) - float(ref_loss)) <= 1e-6
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-5)
  for key in ('acc_i2t', 'acc_t2i'):
    assert float(metrics[key]) == float(ref_metrics[key])
  assert 0.0 < float(metrics['acc_i2t']) < 1.0


def test_logits_per_device_are_local_rows_only():
  """The compiled sharded loss never materialises a B x B matrix on one device."""
  b_total, dim = 64, 8
  loss_fn = make_softmax_loss(mesh(8, 1), ('data', 'fsdp'))
  args = (jnp.ones((b_total, dim)), jnp.ones((b_total, dim)), jnp.float32(1.0))
  hlo = jax.jit(loss_fn).lower(*args).compile().as_text()
  assert f'f32[8,{b_total}]' in hlo
  assert f'f32[{b_total},{b_total}]' not in hlo

"""`model.attention`: every implementation that runs here computes the reference function (masks
included), the rule that picks one per platform and dtype, and the errors for impossible choices."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from configs.common import base_config
from data.errors import ConfigError
from pretrain import backends
from pretrain.backends import resolve_attention, resolve_for_platform
from pretrain.backends.tpu import splash
from pretrain.models import ops
from tests.helpers import max_tree_diff

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MASKINGS = ['none', 'padding', 'causal', 'both']


def _inputs(length: int = 13):
  keys = jax.random.split(jax.random.key(0), 4)
  q, k, v, g = (jax.random.normal(key, (3, length, 2, 16)) for key in keys)
  key_mask = jnp.arange(length)[None, :] < jnp.array([length, 5, 1])[:, None]  # row 3: one key
  return q, k, v, g, key_mask


def _reference(q, k, v, key_mask, causal):
  """jax.nn.dot_product_attention with the mask the layers meant before fused kernels."""
  mask = None if key_mask is None else key_mask[:, None, None, :]
  return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal)


IMPLS = {'xla': backends.attention_impl('xla'), 'cpu': backends.attention_impl('cpu'),
         'splash': lambda *args: splash.attention(*args, interpret=True)}


@pytest.mark.parametrize('masking', MASKINGS)
@pytest.mark.parametrize('impl', list(IMPLS))
def test_attention_equals_the_reference_values_and_gradients(impl, masking):
  """Splash runs in Pallas interpret mode; its 128-token padding is exercised by length 13."""
  q, k, v, g, key_mask = _inputs()
  key_mask = key_mask if masking in ('padding', 'both') else None
  causal = masking in ('causal', 'both')
  attention = lambda q, k, v: IMPLS[impl](q, k, v, key_mask, causal)
  reference = lambda q, k, v: _reference(q, k, v, key_mask, causal)
  assert float(jnp.max(jnp.abs(attention(q, k, v) - reference(q, k, v)))) <= 1e-5
  loss = lambda f: lambda *args: jnp.sum(f(*args) * g)
  grads = jax.grad(loss(attention), argnums=(0, 1, 2))(q, k, v)
  ref_grads = jax.grad(loss(reference), argnums=(0, 1, 2))(q, k, v)
  assert max_tree_diff(grads, ref_grads) <= 1e-5


def test_splash_runs_per_batch_shard_under_an_activation_mesh():
  """Inside the step's activation mesh the kernel runs in shard_map over the batch axes."""
  from pretrain.parallel.activations import activations_split_over
  from tests.helpers import mesh
  q, k, v, _, key_mask = _inputs()
  q, k, v, key_mask = (jnp.concatenate([t, t[:1]]) for t in (q, k, v, key_mask))  # 4 rows
  with activations_split_over(mesh(2, 2)):
    out = jax.jit(lambda *a: splash.attention(*a, causal=True, interpret=True))(q, k, v, key_mask)
    text = jax.jit(lambda *a: splash.attention(*a, causal=True)).trace(
        q, k, v, key_mask).lower(lowering_platforms=('tpu',)).as_text()
  assert float(jnp.max(jnp.abs(out - _reference(q, k, v, key_mask, True)))) <= 1e-5
  assert 'tpu_custom_call' in text and 'sdy.manual_computation' in text  # the shard_map


@pytest.mark.parametrize('platform, dtype, ops_set, expected', [
    ('gpu', 'bfloat16', 'stock', 'cudnn'), ('cuda', 'float16', 'stock', 'cudnn'),
    ('gpu', 'float32', 'stock', 'xla'), ('cuda', 'float32', 'stock', 'xla'),
    ('tpu', 'bfloat16', 'stock', 'splash'), ('tpu', 'float32', 'stock', 'splash'),
    ('cpu', 'float32', 'cpu', 'cpu'), ('cpu', 'bfloat16', 'cpu', 'cpu'),
    ('cpu', 'float32', 'stock', 'xla'), ('rocm', 'bfloat16', 'stock', 'xla')])
def test_auto_picks_by_platform_and_dtype(platform, dtype, ops_set, expected):
  assert resolve_attention('auto', platform, dtype, ops_set) == expected


@pytest.mark.parametrize('requested, platform, dtype', [
    ('xla', 'cpu', 'float32'), ('xla', 'tpu', 'bfloat16'), ('cudnn', 'gpu', 'bfloat16'),
    ('splash', 'tpu', 'float32'), ('cpu', 'cpu', 'bfloat16')])
def test_explicit_choices_the_platform_runs_are_kept(requested, platform, dtype):
  assert resolve_attention(requested, platform, dtype, 'stock') == requested


@pytest.mark.parametrize('requested, platform, dtype, error', [
    ('cudnn', 'cpu', 'bfloat16',
     "model.attention 'cudnn' runs on gpu/cuda, not on platform 'cpu'; use 'auto' or 'xla'"),
    ('splash', 'cuda', 'bfloat16',
     "model.attention 'splash' runs on tpu, not on platform 'cuda'; use 'auto' or 'xla'"),
    ('cpu', 'tpu', 'float32',
     "model.attention 'cpu' runs on cpu, not on platform 'tpu'; use 'auto' or 'xla'"),
    ('cudnn', 'gpu', 'float32', "model.attention 'cudnn' takes bf16/fp16 inputs; model.dtype is "
     "'float32' (set model.dtype=bfloat16, or attention 'auto' or 'xla')"),
    ('flash', 'tpu', 'float32',
     "unknown model.attention 'flash'; known: auto, xla, cudnn, splash, cpu")])
def test_choices_the_platform_cannot_run_are_one_line_errors(requested, platform, dtype, error):
  with pytest.raises(ConfigError) as raised:
    resolve_attention(requested, platform, dtype, 'stock')
  assert str(raised.value) == error


def test_resolved_config_names_the_attention_and_resolves_to_itself():
  config = base_config()
  config.model.dtype = 'bfloat16'
  for platform, expected in (('cpu', 'cpu'), ('cuda', 'cudnn'), ('tpu', 'splash')):
    resolved = resolve_for_platform(config, platform)
    assert resolved.model.attention == expected
    assert resolve_for_platform(resolved, platform).to_dict() == resolved.to_dict()


def test_op_set_carries_the_chosen_attention_and_its_input_dtype():
  stock_xla = backends.op_set('stock', 'xla')
  cpu_set = backends.op_set('cpu', 'cpu')
  cpu_with_xla = backends.op_set('cpu', 'xla')
  assert stock_xla.attention is ops.attention and stock_xla.attention_in_compute_dtype
  assert cpu_set.attention is backends.attention_impl('cpu')
  assert not cpu_set.attention_in_compute_dtype
  assert cpu_with_xla.linear is cpu_set.linear and cpu_with_xla.attention is ops.attention


def test_train_with_cudnn_attention_on_the_cpu_is_a_one_line_error(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'pretrain.train', '--config', 'configs/demo.py',
       '--workdir', str(tmp_path / 'run'), '--config.model.attention=cudnn',
       '--config.model.dtype=bfloat16'],
      cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu'), capture_output=True,
      text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip() == ("error: model.attention 'cudnn' runs on gpu/cuda, not on "
                                   "platform 'cpu'; use 'auto' or 'xla'")

"""The bf16 mixed-precision policy (README, "Mixed precision"), read off the traced computation:
matmul inputs, activations and the residual stream bf16; reductions (LayerNorm statistics,
softmax, embedding normalisation, loss, gradient sums over the batch) in fp32; parameters,
gradients and optimizer state fp32 before and after a step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pretrain.models import build_model
from tests.helpers import loss_and_grads, mesh, random_batch, step_builder, tiny_config

REDUCTIONS = ('reduce_sum', 'reduce_max', 'reduce_min', 'argmax', 'cumsum', 'cumlogsumexp',
              'reduce_precision')


def _equations(jaxpr):
  """Every equation of a jaxpr and of the jaxprs nested in it (scan, remat, custom_vjp, pjit)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          yield from _equations(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          yield from _equations(sub)


def _policy(jaxpr) -> dict[str, set]:
  """The dtypes a jaxpr computes in: 'dots' (operand pairs), 'reductions' (float ones), 'carries'
  (float carries of each scan: the residual stream over scanned blocks, forward and backward),
  'gelu' (erf/erfc operands) and 'softmax' (exp operands of rank >= 4: attention's scores)."""
  dots, reductions, carries, gelu, softmax = set(), set(), set(), set(), set()
  for eqn in _equations(jaxpr):
    dtypes = tuple(str(v.aval.dtype) for v in eqn.invars if hasattr(v.aval, 'dtype'))
    name = eqn.primitive.name
    if name == 'scan':
      first = eqn.params['num_consts']
      carries |= {str(v.aval.dtype) for v in eqn.invars[first:first + eqn.params['num_carry']]
                  if jnp.issubdtype(v.aval.dtype, jnp.floating)}
    elif name in ('erf', 'erfc'):
      gelu.add(dtypes[0])
    elif name == 'exp' and eqn.invars[0].aval.ndim >= 4:
      softmax.add(dtypes[0])
    if eqn.primitive.name == 'dot_general':
      # jax.nn's attention pins its fp32-gradient x bf16 products to this algorithm: operands
      # rounded to bf16, fp32 accumulation, whatever their declared dtype.
      bf16_algorithm = eqn.params['precision'] == jax.lax.DotAlgorithmPreset.BF16_BF16_F32
      dots.add(('bfloat16', 'bfloat16') if bf16_algorithm else dtypes)
    elif eqn.primitive.name in REDUCTIONS and jnp.issubdtype(dtypes[0], jnp.floating):
      reductions.add(dtypes[0])
  return dict(dots=dots, reductions=reductions, carries=carries, gelu=gelu, softmax=softmax)


def _bf16_model(ops: str, pool: str = 'cls'):
  config = tiny_config()
  config.model.update(dict(dtype='bfloat16', ops=ops, attention='cpu' if ops == 'cpu' else 'xla',
                           image_pool=pool, scan_layers=True))
  return config, build_model(config.model, config.loss, nnx.Rngs(0))


@pytest.mark.parametrize('pool', ['cls', 'gap', 'map'])
def test_bf16_towers_multiply_in_bf16_and_reduce_in_fp32(pool):
  """The stock ops (what GPUs and TPUs run): every matmul, attention's included, takes bf16, in
  the forward and the backward pass; the residual stream (and its gradient) and GELU are bf16;
  every reduction (LayerNorm statistics, softmax, gradient sums over the batch) is fp32, and so
  are attention's softmax and the towers' normalised outputs."""
  config, model = _bf16_model('stock', pool)
  graphdef, state = nnx.split(model)
  images = jnp.zeros((2, 16, 16, 3), jnp.uint8)
  tokens = jnp.ones((2, config.model.context_length), jnp.int32)

  def towers(state, images, tokens):
    model = nnx.merge(graphdef, state)
    return model.embed_images(images), model.embed_texts(tokens)

  loss = lambda state: sum(jnp.sum(e) for e in towers(state, images, tokens))
  found = _policy(jax.make_jaxpr(jax.value_and_grad(loss))(state).jaxpr)
  assert found['dots'] == {('bfloat16', 'bfloat16')}
  assert found['reductions'] == {'float32'}
  assert found['carries'] == {'bfloat16'}
  assert found['gelu'] == {'bfloat16'}
  assert found['softmax'] == {'float32'}
  assert all(out.dtype == jnp.float32 for out in towers(state, images, tokens))


def test_bf16_cpu_ops_keep_only_attention_in_fp32():
  """The CPU set's attention takes fp32 q, k, v (ops.OpSet.attention_in_compute_dtype says why);
  every other matmul takes bf16, forward and backward; the residual stream and GELU are bf16 and
  every reduction fp32, as with the stock ops."""
  config, model = _bf16_model('cpu')
  graphdef, state = nnx.split(model)
  tokens = jnp.ones((2, config.model.context_length), jnp.int32)
  loss = lambda state: jnp.sum(nnx.merge(graphdef, state).embed_texts(tokens))
  found = _policy(jax.make_jaxpr(jax.grad(loss))(state).jaxpr)
  assert found['dots'] == {('bfloat16', 'bfloat16'), ('float32', 'float32')}
  assert found['reductions'] == {'float32'}
  assert found['carries'] == found['gelu'] == {'bfloat16'}
  assert found['softmax'] == {'float32'}


def _float_dtypes(tree) -> set[str]:
  return {str(leaf.dtype) for leaf in jax.tree.leaves(tree)
          if jnp.issubdtype(leaf.dtype, jnp.floating)}


def test_bf16_step_keeps_parameters_and_optimizer_state_fp32():
  from pretrain.parallel.sharding import batch_sharding
  config = tiny_config()
  config.model.dtype = 'bfloat16'
  the_mesh = mesh(2, 4)
  builder = step_builder(config, the_mesh)
  state = builder.init_state()
  assert _float_dtypes(state.params) == _float_dtypes(state.opt_state) == {'float32'}
  from data.records import BAD_KINDS
  batch = dict(random_batch(config, 16), bad=np.zeros((16, len(BAD_KINDS)), np.int32))
  batch = jax.device_put(batch, batch_sharding(the_mesh))
  new_state, metrics = builder.jit_step()(state, batch)  # `state` is donated
  assert _float_dtypes(new_state.params) == _float_dtypes(new_state.opt_state) == {'float32'}
  assert metrics['loss'].dtype == jnp.float32 and np.isfinite(float(metrics['loss']))
  _, _, grads = loss_and_grads(config, the_mesh, random_batch(config, 16))
  assert {str(g.dtype) for g in jax.tree.leaves(grads)} == {'float32'}

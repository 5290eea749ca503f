"""Tower outputs, pooling modes and attention masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pretrain.models import build_model
from pretrain.backends.cpu.ops import CPU_OPS
from pretrain.models.ops import STOCK_OPS
from pretrain.models.towers import TextTower, patchify
from tests.helpers import tiny_config


@pytest.mark.parametrize('pool', ['cls', 'gap', 'map'])
def test_image_tower_pools_give_unit_embeddings(pool):
  config = tiny_config()
  config.model.image_pool = pool
  model = build_model(config.model, config.loss, nnx.Rngs(0))
  images = jax.random.randint(jax.random.key(0), (3, 16, 16, 3), 0, 256).astype(jnp.uint8)
  emb = model.embed_images(images)
  assert emb.shape == (3, 128)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(emb), axis=1), 1.0, rtol=1e-5)


def test_an_unknown_pool_is_refused_by_the_tower_as_by_the_config_check():
  from data.errors import ConfigError
  with pytest.raises(ConfigError, match=r"^unknown model.text_pool 'last'; known: eot, cls, "):
    _text_tower(True, 'last')
  config = tiny_config()
  config.model.image_pool = 'avg'
  with pytest.raises(ConfigError, match=r"^unknown model.image_pool 'avg'; known: cls, gap, map$"):
    build_model(config.model, config.loss, nnx.Rngs(0))

def test_patchify_matches_strided_conv_layout():
  x = jnp.arange(2 * 4 * 4 * 3).reshape(2, 4, 4, 3)
  p = patchify(x, 2)
  assert p.shape == (2, 4, 12)
  np.testing.assert_array_equal(p[0, 1], x[0, 0:2, 2:4].reshape(-1))  # second patch: top right


def _text_tower(causal, pool, ops=CPU_OPS):
  return TextTower(vocab_size=32, context_length=8, width=32, depth=2, heads=4, mlp_dim=64,
                   embed_dim=16, causal=causal, pool=pool, dtype=jnp.float32, rngs=nnx.Rngs(0),
                   ops=ops)


@pytest.mark.parametrize('ops', [CPU_OPS, STOCK_OPS], ids=['cpu', 'stock'])
@pytest.mark.parametrize('causal, pool', [(True, 'eot'), (False, 'cls'), (False, 'eot')])
def test_padding_is_ignored(causal, pool, ops):
  """Changing the padding embedding (row 0) must not change any embedding: pads are masked."""
  tower = _text_tower(causal, pool, ops)
  tokens = jnp.array([[5, 6, 7, 2, 0, 0, 0, 0], [9, 2, 0, 0, 0, 0, 0, 0]], jnp.int32)
  before = tower(tokens)
  tower.token_embed.embedding[...] = tower.token_embed.embedding[...].at[0].add(3.0)
  np.testing.assert_allclose(np.asarray(tower(tokens)), np.asarray(before), atol=1e-6)


def test_causal_eot_ignores_nothing_before_end():
  """The causal tower's embedding depends on every token up to end-of-text."""
  tower = _text_tower(True, 'eot')
  a = tower(jnp.array([[5, 6, 7, 2, 0, 0, 0, 0]], jnp.int32))
  b = tower(jnp.array([[8, 6, 7, 2, 0, 0, 0, 0]], jnp.int32))
  assert float(jnp.max(jnp.abs(a - b))) > 1e-4


def test_causal_mask_blocks_future_tokens():
  """With a causal mask, position 1's output does not depend on position 2's token."""
  tower = _text_tower(True, 'eot')
  x1 = tower.token_embed(jnp.array([[5, 6, 7, 2]]))
  x2 = tower.token_embed(jnp.array([[5, 6, 9, 2]]))
  pos = tower.pos_embed[...][:4]
  mask = jnp.ones((1, 4), bool)
  y1 = tower.encoder(x1 + pos, key_mask=mask, causal=True)
  y2 = tower.encoder(x2 + pos, key_mask=mask, causal=True)
  np.testing.assert_allclose(np.asarray(y1[:, :2]), np.asarray(y2[:, :2]), atol=1e-6)
  assert float(jnp.max(jnp.abs(y1[:, 2:] - y2[:, 2:]))) > 1e-4


def test_logit_scale_init_and_clamp():
  config = tiny_config()
  config.loss.init_logit_scale = 1.0
  model = build_model(config.model, config.loss, nnx.Rngs(0))
  assert float(model.logit_scale()) == pytest.approx(1.0)
  config.loss.init_logit_scale = 500.0
  model = build_model(config.model, config.loss, nnx.Rngs(0))
  assert float(model.logit_scale()) == pytest.approx(100.0)


def test_text_pool_positions():
  """'eot' finds the last non-padding token even with id 0 inside a text (CLIP's '!');
  'argmax' the first highest id; 'eos_id' the first end-of-text id."""
  tokens = jnp.array([[5, 0, 7, 2, 0, 0, 0, 0], [9, 31, 31, 4, 2, 2, 2, 2]], jnp.int32)
  assert _text_tower(True, 'eot').pool_index(tokens).tolist() == [3, 7]
  assert _text_tower(True, 'argmax').pool_index(tokens).tolist() == [2, 1]
  tower = TextTower(vocab_size=32, context_length=8, width=32, depth=2, heads=4, mlp_dim=64,
                    embed_dim=16, causal=True, pool='eos_id', eos_id=2, dtype=jnp.float32,
                    rngs=nnx.Rngs(0), ops=CPU_OPS)
  assert tower.pool_index(tokens).tolist() == [3, 4]


def test_quick_gelu_and_ln_pre_options():
  x = jnp.linspace(-4, 4, 9)
  for ops in (CPU_OPS, STOCK_OPS):
    np.testing.assert_allclose(ops.activations['quick_gelu'](x), x / (1 + np.exp(-1.702 * x)),
                               rtol=1e-6)
  config = tiny_config()
  config.model.update(dict(activation='quick_gelu', image_ln_pre=True))
  model = build_model(config.model, config.loss, nnx.Rngs(0))
  images = jax.random.randint(jax.random.key(0), (2, 16, 16, 3), 0, 256).astype(jnp.uint8)
  before = model.embed_images(images)
  # ln_pre is on the path (a per-channel change: a uniform shift would cancel in later norms).
  model.img.ln_pre.scale[...] = jnp.linspace(0.5, 1.5, model.img.ln_pre.scale.shape[0])
  assert float(jnp.max(jnp.abs(model.embed_images(images) - before))) > 1e-3

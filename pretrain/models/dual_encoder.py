"""The dual encoder: image tower, text tower and one learned temperature."""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from pretrain import backends
from pretrain.losses.matryoshka import prefix_widths
from pretrain.models.towers import ImageTower, TextTower
from pretrain.models.efficientnet import EfficientNetTower
from pretrain.models.variants import image_tower_kind, model_size

Array = jax.Array
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


class DualEncoder(nnx.Module):
  """Image and text towers into one embedding space, plus the contrastive logit scale."""

  def __init__(self, image: ImageTower, text: TextTower, init_logit_scale: float,
               max_logit_scale: float | None, init_logit_bias: float | None = None,
               prefix_temperatures: int = 0):
    self.img = image
    self.txt = text
    # Stored in log space so it stays positive; OpenCLIP/CLIP keep it the same way.
    self.log_logit_scale = nnx.Param(jnp.asarray(math.log(init_logit_scale), jnp.float32))
    self.max_logit_scale = max_logit_scale
    if init_logit_bias is not None:  # SigLIP's learned bias (init -10).
      self.logit_bias = nnx.Param(jnp.asarray(init_logit_bias, jnp.float32))
    # Matryoshka with one temperature (and bias) per prefix: those of the prefixes narrower than
    # the full width, which keeps the scalars above (what evaluation and export read).
    self.prefix_temperatures = prefix_temperatures
    if prefix_temperatures:
      self.prefix_log_logit_scale = nnx.Param(
          jnp.full((prefix_temperatures,), math.log(init_logit_scale), jnp.float32))
      if init_logit_bias is not None:
        self.prefix_logit_bias = nnx.Param(
            jnp.full((prefix_temperatures,), init_logit_bias, jnp.float32))

  def embed_images(self, images: Array, train: bool = False, key: Array | None = None) -> Array:
    """uint8 images [B, H, W, 3] -> unit embeddings [B, D].

    `train` selects batch statistics for BatchNorm towers and `key` their stochastic depth;
    eval jobs leave both off (running averages, every block).
    """
    return self.img(images, train, key)

  def embed_texts(self, tokens: Array) -> Array:
    """int32 tokens [B, T] -> unit embeddings [B, D]."""
    return self.txt(tokens)

  def logit_scale(self) -> Array:
    """exp(log scale), clamped at max_logit_scale when one is set (CLIP: 100)."""
    scale = jnp.exp(self.log_logit_scale[...])
    return self._clamp(scale)

  def _clamp(self, scale: Array) -> Array:
    return jnp.minimum(scale, self.max_logit_scale) if self.max_logit_scale else scale

  def loss_logit_scale(self) -> Array:
    """What the loss gets: the shared scale, or [prefixes] scales (narrowest first, full last)."""
    if not self.prefix_temperatures:
      return self.logit_scale()
    narrow = self._clamp(jnp.exp(self.prefix_log_logit_scale[...]))
    return jnp.concatenate([narrow, self.logit_scale()[None]])

  def loss_logit_bias(self) -> Array:
    """SigLIP's bias as the loss gets it: shared, or one per prefix like `loss_logit_scale`."""
    if not self.prefix_temperatures:
      return self.logit_bias[...]
    return jnp.concatenate([self.prefix_logit_bias[...], self.logit_bias[...][None]])


def build_model(model_cfg, loss_cfg, rngs: nnx.Rngs) -> DualEncoder:
  """Builds the dual encoder named by `config.model` with the temperature of `config.loss`.

  Its ops are the set `model_cfg.ops` names ('stock' or 'cpu', as resolve_for_platform leaves
  it; 'auto' picks for this process's backend) with the attention `model_cfg.attention` names."""
  size = model_size(model_cfg)
  ops = backends.op_set(model_cfg.get('ops', 'auto'), model_cfg.get('attention', 'auto'),
                        model_cfg.dtype)
  dtype = DTYPES[model_cfg.dtype]
  if image_tower_kind(size) != 'vit':
    image = EfficientNetTower(
        scale=image_tower_kind(size), embed_dim=size['embed_dim'],
        mean=tuple(model_cfg.image_mean), std=tuple(model_cfg.image_std), dtype=dtype, rngs=rngs,
        ops=ops, drop_path=model_cfg.image_drop_path, bn_momentum=model_cfg.image_bn_momentum)
  else:
    image = ImageTower(
        image_size=model_cfg.image_size, patch=size['patch'], width=size['image_width'],
        depth=size['image_depth'], heads=size['image_heads'], mlp_dim=size['image_mlp'],
        embed_dim=size['embed_dim'], pool=model_cfg.image_pool, mean=tuple(model_cfg.image_mean),
        std=tuple(model_cfg.image_std), dtype=dtype, rngs=rngs, ops=ops,
        remat=model_cfg.image_remat, scan=model_cfg.scan_layers, activation=model_cfg.activation,
        ln_pre=model_cfg.image_ln_pre)
  text = TextTower(
      vocab_size=model_cfg.vocab_size, context_length=model_cfg.context_length,
      width=size['text_width'], depth=size['text_depth'], heads=size['text_heads'],
      mlp_dim=size['text_mlp'], embed_dim=size['embed_dim'], causal=model_cfg.text_causal,
      pool=model_cfg.text_pool, dtype=dtype, rngs=rngs, ops=ops, remat=model_cfg.text_remat,
      scan=model_cfg.scan_layers, activation=model_cfg.activation, eos_id=model_cfg.text_eos_id)
  bias = loss_cfg.init_logit_bias if loss_cfg.name == 'sigmoid' else None
  dims = tuple(loss_cfg.get('matryoshka_dims', ()))
  per_prefix = bool(dims) and loss_cfg.get('matryoshka_per_prefix_temperature', False)
  narrow = len(prefix_widths(dims, size['embed_dim'])) - 1 if per_prefix else 0
  return DualEncoder(image, text, loss_cfg.init_logit_scale, loss_cfg.max_logit_scale, bias, narrow)

"""The ViT image tower and the Transformer text tower, each ending in an L2-normalised embedding."""

import jax
import jax.numpy as jnp
from flax import nnx

from data.errors import require
from pretrain.models.layers import EMBED_INIT, AttentionPool, Dtype, Encoder, dense, layer_norm
from pretrain.models.ops import OpSet
from pretrain.parallel.activations import batch_sharded, gathered

Array = jax.Array
IMAGE_POOLS = ('cls', 'gap', 'map')
# 'eot': the last non-padding token (our tokenizers end every text with end-of-text); 'cls': a
# learned [CLS] prepended (BERT); 'argmax': the highest token id (OpenCLIP; HF CLIP with eos id 2);
# 'eos_id': the first `eos_id` (HF CLIP, OpenCLIP's 'eos').
TEXT_POOLS = ('eot', 'cls', 'argmax', 'eos_id')


def check_pool(tower: str, pool: str) -> None:
  """`model.<tower>_pool` ('image' or 'text' tower) names a pooling that tower has."""
  known = IMAGE_POOLS if tower == 'image' else TEXT_POOLS
  require(pool in known, f'unknown model.{tower}_pool {pool!r}; known: {", ".join(known)}')


def l2_normalize(x: Array, eps: float = 1e-6) -> Array:
  """Unit-length rows, computed in fp32."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def normalize_pixels(images: Array, mean: tuple, std: tuple, dtype) -> Array:
  """uint8 [0, 255] pixels -> mean/std-normalised floats in `dtype`, on the device."""
  x = images.astype(jnp.float32) / 255.0
  return ((x - jnp.asarray(mean)) / jnp.asarray(std)).astype(dtype)


def patchify(images: Array, patch: int) -> Array:
  """[B, H, W, C] -> [B, (H/p)*(W/p), p*p*C], patches in raster order, pixels (row, col, channel)."""
  b, h, w, c = images.shape
  x = images.reshape(b, h // patch, patch, w // patch, patch, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


class ImageTower(nnx.Module):
  """ViT: linear patch embedding, learned positions, pre-LN encoder, pooling, projection."""

  def __init__(self, *, image_size: int, patch: int, width: int, depth: int, heads: int,
               mlp_dim: int, embed_dim: int, pool: str, mean: tuple, std: tuple, dtype: Dtype,
               rngs: nnx.Rngs, ops: OpSet, remat: str = 'none', scan: bool = False,
               activation: str = 'gelu', ln_pre: bool = False):
    check_pool('image', pool)
    self.patch, self.pool, self.dtype = patch, pool, dtype
    self.mean, self.std = tuple(mean), tuple(std)
    num_tokens = (image_size // patch) ** 2 + (1 if pool == 'cls' else 0)
    self.patch_embed = dense(patch * patch * 3, width, dtype=dtype, rngs=rngs, ops=ops)
    self.pos_embed = nnx.Param(EMBED_INIT(rngs.params(), (num_tokens, width), jnp.float32))
    if pool == 'cls':
      self.cls_token = nnx.Param(jnp.zeros((1, 1, width), jnp.float32))
    if pool == 'map':
      self.map_head = AttentionPool(width, heads, mlp_dim, dtype=dtype, rngs=rngs, ops=ops,
                                    activation=activation)
    if ln_pre:  # CLIP's LayerNorm on the embedded patches, before the first block.
      self.ln_pre = layer_norm(width, rngs=rngs, ops=ops)
    self.encoder = Encoder(width, depth, heads, mlp_dim, dtype=dtype, rngs=rngs, ops=ops,
                           remat=remat, scan=scan, activation=activation)
    # fp32 output: the embedding's L2 normalisation and the loss are fp32 (a [B, D] tensor).
    self.proj = dense(width, embed_dim, use_bias=False, dtype=dtype, rngs=rngs, ops=ops,
                      out_dtype=jnp.float32)

  def __call__(self, images: Array, train: bool = False, key: Array | None = None) -> Array:
    del train, key  # No BatchNorm or stochastic depth in the ViT.
    x = self.patch_embed(patchify(normalize_pixels(images, self.mean, self.std, self.dtype),
                                  self.patch))
    # [CLS] and positions join in fp32, then the stream takes the compute dtype: their gradients
    # are sums over the batch, kept out of bf16 (README, "Mixed precision").
    x = x.astype(jnp.float32)
    if self.pool == 'cls':
      cls = jnp.broadcast_to(self.cls_token[...], (x.shape[0], 1, x.shape[-1]))
      x = jnp.concatenate([cls, x], axis=1)
    x = (x + self.pos_embed[...]).astype(self.dtype)
    if hasattr(self, 'ln_pre'):
      x = self.ln_pre(x)
    x = self.encoder(x)
    if self.pool == 'cls':
      pooled = x[:, 0]
    elif self.pool == 'gap':
      pooled = jnp.mean(x.astype(jnp.float32), axis=1)
    else:
      pooled = self.map_head(x)
    return l2_normalize(self.proj(pooled))


class TextTower(nnx.Module):
  """Transformer over token ids: causal with end-of-text pooling (CLIP) or bidirectional [CLS] (BERT)."""

  def __init__(self, *, vocab_size: int, context_length: int, width: int, depth: int, heads: int,
               mlp_dim: int, embed_dim: int, causal: bool, pool: str, dtype: Dtype,
               rngs: nnx.Rngs, ops: OpSet, remat: str = 'none', scan: bool = False,
               activation: str = 'gelu',
               eos_id: int = -1):
    check_pool('text', pool)
    self.causal, self.pool, self.dtype, self.eos_id = causal, pool, dtype, eos_id
    num_tokens = context_length + (1 if pool == 'cls' else 0)
    self.token_embed = nnx.Embed(vocab_size, width, embedding_init=EMBED_INIT, dtype=dtype,
                                 param_dtype=jnp.float32, rngs=rngs)
    self.pos_embed = nnx.Param(EMBED_INIT(rngs.params(), (num_tokens, width), jnp.float32))
    if pool == 'cls':
      self.cls_token = nnx.Param(EMBED_INIT(rngs.params(), (1, 1, width), jnp.float32))
    self.encoder = Encoder(width, depth, heads, mlp_dim, dtype=dtype, rngs=rngs, ops=ops,
                           remat=remat, scan=scan, activation=activation)
    self.proj = dense(width, embed_dim, use_bias=False, dtype=dtype, rngs=rngs, ops=ops,
                      out_dtype=jnp.float32)  # As ImageTower.proj.

  def __call__(self, tokens: Array) -> Array:
    """tokens: int32 [B, T], padded with 0 after the end-of-text token."""
    valid = tokens != 0
    # Rows of the fp32 table (gathered whole: activations.gathered says why) plus the fp32
    # positions, cast to the compute dtype by the encoder: the lookup's and the positions'
    # gradients are sums over the batch, kept out of bf16 (README, "Mixed precision").
    x = batch_sharded(jnp.take(gathered(self.token_embed.embedding[...]), tokens, axis=0))
    if self.pool == 'cls':
      cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
      x = jnp.concatenate([cls, x], axis=1)
      valid = jnp.concatenate([jnp.ones_like(valid[:, :1]), valid], axis=1)
    # A causal tower needs no padding mask: padding follows the pooled token, so no position up to
    # it can see padding. Leaving it out also keeps a vocabulary whose id 0 is a real token (CLIP's
    # BPE: '!') exact.
    key_mask = None if self.causal else valid
    x = self.encoder(x + self.pos_embed[...], key_mask=key_mask,
                     causal=self.causal)
    pooled = jnp.take_along_axis(x, self.pool_index(tokens)[:, None, None], axis=1)[:, 0]
    return l2_normalize(self.proj(pooled))

  def pool_index(self, tokens: Array) -> Array:
    """int32 [B]: the position whose output is the text's embedding."""
    positions = jnp.arange(tokens.shape[1], dtype=jnp.int32)
    if self.pool == 'cls':
      return jnp.zeros(tokens.shape[0], jnp.int32)
    if self.pool == 'argmax':
      return jnp.argmax(tokens, axis=1).astype(jnp.int32)
    if self.pool == 'eos_id':  # The first end-of-text; none at all pools at position 0, as HF does.
      return jnp.argmax(tokens == self.eos_id, axis=1).astype(jnp.int32)
    return jnp.max(jnp.where(tokens != 0, positions, 0), axis=1)  # 'eot': last non-padding token

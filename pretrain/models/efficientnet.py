"""EfficientNet image tower (Tan & Le 2019; ALIGN's image encoder), NHWC, in Flax NNX.

MBConv blocks with squeeze-excitation and stochastic depth; compound scaling of width, depth and
resolution (B0-B7, and L2 of Noisy Student / ALIGN); global average pooling into a linear projection.
BatchNorm uses batch statistics while training. Inside the jitted step the batch is one global
array split over the mesh's batch axes, so its mean and variance are over the global batch (GSPMD
inserts the cross-device reduction, as a TPU's cross-replica BatchNorm does); the running averages
are `nnx.BatchStat` leaves of the parameter tree, saved in checkpoints and used by eval jobs.
"""

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from pretrain.models.layers import Dtype, dense
from pretrain.models.ops import OpSet
from pretrain.models.towers import l2_normalize, normalize_pixels

Array = jax.Array

# Compound coefficients: (width, depth, resolution, dropout), from the EfficientNet and Noisy
# Student papers. Only width and depth shape the tower; the input size is `model.image_size`
# (ALIGN trains every scale at 289 px) and there is no classifier dropout in a dual encoder.
SCALING = {
    'b0': (1.0, 1.0, 224, 0.2), 'b1': (1.0, 1.1, 240, 0.2), 'b2': (1.1, 1.2, 260, 0.3),
    'b3': (1.2, 1.4, 300, 0.3), 'b4': (1.4, 1.8, 380, 0.4), 'b5': (1.6, 2.2, 456, 0.4),
    'b6': (1.8, 2.6, 528, 0.5), 'b7': (2.0, 3.1, 600, 0.5), 'l2': (4.3, 5.3, 800, 0.5),
}
# B0's stages: (expand ratio, kernel, stride, output channels, repeats); SE ratio 0.25 throughout.
B0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
             (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
STEM, HEAD, SE_RATIO = 32, 1280, 0.25
BN_EPSILON = 1e-3  # The TF reference implementation's (its momentum: 0.99).


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
  """Channels scaled by `width`, rounded to a multiple of 8 without dropping more than 10%."""
  scaled = channels * width
  rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * scaled else rounded


def round_repeats(repeats: int, depth: float) -> int:
  """Blocks per stage scaled by `depth`, rounded up."""
  return int(math.ceil(depth * repeats))


def conv(d_in: int, d_out: int, kernel: int, *, rngs: nnx.Rngs, dtype: Dtype, stride: int = 1,
         groups: int = 1, use_bias: bool = False) -> nnx.Conv:
  """A 'SAME'-padded NHWC convolution with fp32 parameters (He-normal, fan-out like the reference)."""
  init = nnx.initializers.variance_scaling(2.0, 'fan_out', 'truncated_normal')
  return nnx.Conv(d_in, d_out, (kernel, kernel), strides=stride, padding='SAME',
                  feature_group_count=groups, use_bias=use_bias, kernel_init=init, dtype=dtype,
                  param_dtype=jnp.float32, rngs=rngs)


def batch_norm(channels: int, *, rngs: nnx.Rngs, dtype: Dtype, momentum: float) -> nnx.BatchNorm:
  """BatchNorm over all but the channel axis, with running averages for eval."""
  return nnx.BatchNorm(channels, momentum=momentum, epsilon=BN_EPSILON, dtype=dtype,
                       param_dtype=jnp.float32, rngs=rngs)


class SqueezeExcite(nnx.Module):
  """Channel gates from the globally pooled features (reduce to in_channels * 0.25, then expand)."""

  def __init__(self, channels: int, reduced: int, *, rngs: nnx.Rngs, dtype: Dtype):
    self.reduce = conv(channels, reduced, 1, use_bias=True, rngs=rngs, dtype=dtype)
    self.expand = conv(reduced, channels, 1, use_bias=True, rngs=rngs, dtype=dtype)

  def __call__(self, x: Array) -> Array:
    gate = jnp.mean(x, axis=(1, 2), keepdims=True)
    return x * jax.nn.sigmoid(self.expand(jax.nn.silu(self.reduce(gate))))


class MBConv(nnx.Module):
  """Inverted residual: 1x1 expand, depthwise k x k, squeeze-excite, 1x1 project (+ skip)."""

  def __init__(self, d_in: int, d_out: int, expand: int, kernel: int, stride: int,
               drop_rate: float, *, norm: Callable[[int], nnx.BatchNorm], rngs: nnx.Rngs,
               dtype: Dtype):
    hidden = d_in * expand
    self.expand_conv = conv(d_in, hidden, 1, rngs=rngs, dtype=dtype) if expand != 1 else None
    self.expand_bn = norm(hidden) if expand != 1 else None
    self.depthwise = conv(hidden, hidden, kernel, stride=stride, groups=hidden, rngs=rngs,
                          dtype=dtype)
    self.depthwise_bn = norm(hidden)
    self.se = SqueezeExcite(hidden, max(1, int(d_in * SE_RATIO)), rngs=rngs, dtype=dtype)
    self.project = conv(hidden, d_out, 1, rngs=rngs, dtype=dtype)
    self.project_bn = norm(d_out)
    self.skip = stride == 1 and d_in == d_out
    self.drop_rate = drop_rate

  def __call__(self, x: Array, train: bool, key: Array | None) -> Array:
    frozen = not train
    y = x
    if self.expand_conv is not None:
      y = jax.nn.silu(self.expand_bn(self.expand_conv(y), use_running_average=frozen))
    y = jax.nn.silu(self.depthwise_bn(self.depthwise(y), use_running_average=frozen))
    y = self.project_bn(self.project(self.se(y)), use_running_average=frozen)
    if not self.skip:
      return y
    if train and key is not None and self.drop_rate > 0:  # Stochastic depth, per example.
      keep = 1.0 - self.drop_rate
      alive = jax.random.bernoulli(key, keep, (y.shape[0], 1, 1, 1))
      y = jnp.where(alive, y / keep, 0).astype(y.dtype)
    return x + y


def block_specs(width: float, depth: float) -> list[tuple[int, int, int, int, int]]:
  """(d_in, d_out, expand, kernel, stride) of every MBConv block of the scaled network."""
  specs, d_in = [], round_filters(STEM, width)
  for expand, kernel, stride, channels, repeats in B0_STAGES:
    d_out = round_filters(channels, width)
    for i in range(round_repeats(repeats, depth)):
      specs.append((d_in, d_out, expand, kernel, stride if i == 0 else 1))
      d_in = d_out
  return specs


class EfficientNetTower(nnx.Module):
  """EfficientNet trunk, global average pooling, linear projection, L2-normalised embedding."""

  def __init__(self, *, scale: str, embed_dim: int, mean: tuple, std: tuple, dtype: Dtype,
               rngs: nnx.Rngs, ops: OpSet, drop_path: float = 0.2, bn_momentum: float = 0.99):
    if scale not in SCALING:
      raise ValueError(f'unknown EfficientNet scale {scale!r}; known: {", ".join(SCALING)}')
    width, depth, _, _ = SCALING[scale]
    self.mean, self.std, self.dtype = tuple(mean), tuple(std), dtype
    norm = functools.partial(batch_norm, rngs=rngs, dtype=dtype, momentum=bn_momentum)
    stem = round_filters(STEM, width)
    self.stem = conv(3, stem, 3, stride=2, rngs=rngs, dtype=dtype)
    self.stem_bn = norm(stem)
    specs = block_specs(width, depth)
    self.blocks = nnx.List([
        MBConv(*spec, drop_rate=drop_path * i / len(specs), norm=norm, rngs=rngs, dtype=dtype)
        for i, spec in enumerate(specs)])
    self.head_width = round_filters(HEAD, width)
    self.head = conv(specs[-1][1], self.head_width, 1, rngs=rngs, dtype=dtype)
    self.head_bn = norm(self.head_width)
    self.proj = dense(self.head_width, embed_dim, use_bias=False, dtype=dtype, rngs=rngs, ops=ops,
                      out_dtype=jnp.float32)  # fp32 into the L2 normalisation, as the ViT's.

  def features(self, images: Array, train: bool = False, key: Array | None = None) -> Array:
    """uint8 images [B, H, W, 3] -> globally pooled features [B, head_width]."""
    x = normalize_pixels(images, self.mean, self.std, self.dtype)
    x = jax.nn.silu(self.stem_bn(self.stem(x), use_running_average=not train))
    for i, block in enumerate(self.blocks):
      x = block(x, train, None if key is None else jax.random.fold_in(key, i))
    x = jax.nn.silu(self.head_bn(self.head(x), use_running_average=not train))
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))

  def __call__(self, images: Array, train: bool = False, key: Array | None = None) -> Array:
    return l2_normalize(self.proj(self.features(images, train, key)))

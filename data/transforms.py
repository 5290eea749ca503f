"""Image transforms: anything Pillow reads -> uint8 [S, S, 3] (normalisation happens on device).

Training augmentations (`data.augment`):
  resize_crop           resize the shorter side to `data.resize`, random crop S x S (the default)
  random_resized_crop   OpenCLIP's train transform: torchvision's RandomResizedCrop with
                        scale `data.rrc_scale` (OpenCLIP: (0.9, 1.0)), ratio (3/4, 4/3), bicubic
Either is followed by the optional horizontal flip; all randomness comes from the caller's rng.
"""

import math

import numpy as np
from PIL import Image

from data.records import to_rgb

AUGMENTS = ('resize_crop', 'random_resized_crop')
RRC_RATIO = (3 / 4, 4 / 3)  # torchvision's and OpenCLIP's aspect-ratio range
RRC_ATTEMPTS = 10  # torchvision tries this many random boxes before its centre-crop fallback


def _resize_shorter(image: Image.Image, size: int) -> Image.Image:
  w, h = image.size
  if min(w, h) == size:
    return image
  scale = size / min(w, h)
  return image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)


def eval_transform(image, size: int) -> np.ndarray:
  """Resize the shorter side to `size`, then centre crop to `size` x `size`."""
  image = _resize_shorter(to_rgb(image), size)
  w, h = image.size
  left, top = (w - size) // 2, (h - size) // 2
  return np.asarray(image.crop((left, top, left + size, top + size)))


def _flip(out: np.ndarray, flip: bool, rng: np.random.Generator) -> np.ndarray:
  if flip and rng.random() < 0.5:
    out = out[:, ::-1]
  return np.ascontiguousarray(out)


def train_transform(image, size: int, resize: int, flip: bool, rng: np.random.Generator) -> np.ndarray:
  """Resize the shorter side to `resize` (>= size), random crop `size`, optional horizontal flip."""
  image = _resize_shorter(to_rgb(image), max(resize, size))
  w, h = image.size
  left, top = rng.integers(0, w - size + 1), rng.integers(0, h - size + 1)
  return _flip(np.asarray(image.crop((left, top, left + size, top + size))), flip, rng)


def rrc_box(width: int, height: int, scale: tuple[float, float], rng: np.random.Generator,
            ratio: tuple[float, float] = RRC_RATIO) -> tuple[int, int, int, int]:
  """(left, top, w, h) of torchvision's RandomResizedCrop.get_params, drawn from `rng`."""
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(RRC_ATTEMPTS):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))  # torchvision draws the row first
      left = int(rng.integers(0, width - w + 1))
      return left, top, w, h
  in_ratio = width / height  # No box fitted: the centre crop at the nearest allowed ratio.
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    w, h = int(round(height * max(ratio))), height
  else:
    w, h = width, height
  return (width - w) // 2, (height - h) // 2, w, h


def random_resized_crop(image, size: int, scale: tuple[float, float], flip: bool,
                        rng: np.random.Generator) -> np.ndarray:
  """A random box (area share in `scale`, aspect in 3/4..4/3) resized to `size` x `size` (bicubic,
  as OpenCLIP), then the optional horizontal flip."""
  image = to_rgb(image)
  left, top, w, h = rrc_box(*image.size, scale, rng)
  crop = image.crop((left, top, left + w, top + h)).resize((size, size), Image.BICUBIC)
  return _flip(np.asarray(crop), flip, rng)

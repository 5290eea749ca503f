"""Image transforms: anything Pillow reads -> uint8 [S, S, 3] (normalisation happens on device)."""

import numpy as np
from PIL import Image

from data.records import to_rgb


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


def train_transform(image, size: int, resize: int, flip: bool, rng: np.random.Generator) -> np.ndarray:
  """Resize the shorter side to `resize` (>= size), random crop `size`, optional horizontal flip."""
  image = _resize_shorter(to_rgb(image), max(resize, size))
  w, h = image.size
  left, top = rng.integers(0, w - size + 1), rng.integers(0, h - size + 1)
  out = np.asarray(image.crop((left, top, left + size, top + size)))
  if flip and rng.random() < 0.5:
    out = out[:, ::-1]
  return np.ascontiguousarray(out)

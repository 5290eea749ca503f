"""Training augmentations: OpenCLIP's RandomResizedCrop beside the default resize + random crop."""

import ml_collections
import numpy as np
import pytest

from data.errors import ConfigError
from data.pipeline import train_dataset
from data.shapes import ShapesSource
from data.tokenizer import get_tokenizer
from data.transforms import RRC_RATIO, random_resized_crop, rrc_box

SIDE, OUT = 200, 32


def coordinate_image(width: int = SIDE, height: int = SIDE) -> np.ndarray:
  """Red = column, green = row: a crop's box can be read back from its pixels."""
  x, y = np.meshgrid(np.arange(width), np.arange(height))
  return np.stack([x, y, np.zeros_like(x)], -1).astype(np.uint8)


def measured_box(out: np.ndarray) -> tuple[float, float, float, float]:
  """(left, top, w, h) of the source box, from the ramps: bicubic keeps a linear ramp linear, and
  output pixel u samples source x = left + (u + 0.5) * w / OUT - 0.5."""
  red, green = out[..., 0].astype(float), out[..., 1].astype(float)
  w = (red[:, -1].mean() - red[:, 0].mean()) / (1 - 1 / OUT)
  h = (green[-1].mean() - green[0].mean()) / (1 - 1 / OUT)
  return red[:, 0].mean() + 0.5 - 0.5 * w / OUT, green[0].mean() + 0.5 - 0.5 * h / OUT, w, h


@pytest.mark.parametrize('scale', [(0.9, 1.0), (0.3, 0.5), (0.08, 1.0)])
def test_crop_area_and_aspect_are_within_range(scale):
  image = coordinate_image()
  for position in range(40):
    rng = np.random.default_rng((7, position))
    left, top, w, h = rrc_box(SIDE, SIDE, scale, np.random.default_rng((7, position)))
    out = random_resized_crop(image, OUT, scale, False, rng)
    assert out.shape == (OUT, OUT, 3) and out.dtype == np.uint8
    m_left, m_top, m_w, m_h = measured_box(out)
    # The measured box is the drawn one (uint8 rounding: within 2 pixels)...
    assert np.allclose([m_left, m_top, m_w, m_h], [left, top, w, h], atol=2.0)
    # ...and its area share and aspect are in range (up to the rounding of w and h to pixels).
    area = w * h / SIDE**2
    assert scale[0] - 0.02 <= area <= scale[1] + 0.02, (area, scale)
    assert RRC_RATIO[0] - 0.02 <= w / h <= RRC_RATIO[1] + 0.02, (w, h)
    assert 0 <= left and left + w <= SIDE and 0 <= top and top + h <= SIDE


def test_deterministic_per_seed_and_position():
  image = ShapesSource('train', 96)[3]['image']
  crop = lambda seed, position: random_resized_crop(image, 32, (0.3, 1.0), True,
                                                    np.random.default_rng((seed, position)))
  np.testing.assert_array_equal(crop(1, 5), crop(1, 5))
  assert not np.array_equal(crop(1, 5), crop(1, 6))
  assert not np.array_equal(crop(1, 5), crop(2, 5))


def test_falls_back_to_a_centre_crop_at_the_nearest_ratio():
  # A 400 x 30 strip: no box of 90-100% of its area has an aspect within 3/4..4/3.
  assert rrc_box(400, 30, (0.9, 1.0), np.random.default_rng(0)) == (180, 0, 40, 30)
  assert rrc_box(30, 400, (0.9, 1.0), np.random.default_rng(0)) == (0, 180, 30, 40)
  # Measured on pixels: a strip whose value is column // 2 shows columns 180..219 (values 90..109).
  strip = np.repeat((np.tile(np.arange(400) // 2, (30, 1)))[..., None], 3, -1).astype(np.uint8)
  out = random_resized_crop(strip, 20, (0.9, 1.0), False, np.random.default_rng(0))
  assert abs(int(out.min()) - 90) <= 1 and abs(int(out.max()) - 109) <= 1


def _data_cfg(**fields):
  return ml_collections.ConfigDict(dict(resize=0, flip=True, num_threads=1, prefetch=1,
                                        workers=0, on_bad_record='skip', **fields))


def _images(cfg, process_index=0, process_count=1, steps=2):
  ds = train_dataset(ShapesSource('train', 48, size=64), get_tokenizer('shapes'), cfg,
                     image_size=24, context_length=12, global_batch=8, seed=3,
                     process_index=process_index, process_count=process_count)
  it = iter(ds)
  return [next(it)['image'] for _ in range(steps)]


def test_pipeline_rrc_is_seeded_by_global_position():
  cfg = _data_cfg(augment='random_resized_crop', rrc_scale=(0.3, 1.0))
  one = _images(cfg)
  halves = [_images(cfg, p, 2) for p in range(2)]
  for step in range(2):  # the same global batch whatever the process count
    np.testing.assert_array_equal(one[step], np.concatenate([h[step] for h in halves]))
  # The default (no augment field, as older configs) is resize_crop, not the new transform.
  default, explicit = _images(_data_cfg()), _images(_data_cfg(augment='resize_crop'))
  np.testing.assert_array_equal(default[0], explicit[0])
  assert not np.array_equal(default[0], one[0])


def test_bad_augment_is_one_config_error():
  with pytest.raises(ConfigError, match='unknown data.augment'):
    _images(_data_cfg(augment='autoaugment'))
  with pytest.raises(ConfigError, match=r'data.rrc_scale \(0.9, 0.5\)'):
    _images(_data_cfg(augment='random_resized_crop', rrc_scale=(0.9, 0.5)))

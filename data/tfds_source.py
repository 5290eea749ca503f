"""`tfds:NAME[:SPLIT]` through `tfds.data_source` (array_record; no TensorFlow needed)."""

import logging

import numpy as np
from PIL import Image

from data import storage
from data.records import DEFAULT_MAX_PIXELS, BadRecord, decode_caption, decode_image, to_rgb
from data.errors import ConfigError


def array_to_image(array: np.ndarray) -> Image.Image:
  """A decoded TFDS image ([H, W], [H, W, 1], [H, W, 3] or [H, W, 4] uint8) -> RGB."""
  array = np.asarray(array)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  return to_rgb(array.astype(np.uint8))


class TfdsSource:
  """Random access to a prepared TFDS dataset; class names from its ClassLabel feature."""

  def __init__(self, name: str, split: str = 'train', data_dir: str | None = None,
               image_key: str = 'image', caption_key: str = 'caption', label_key: str = 'label'):
    if data_dir and storage.scheme(data_dir):
      # tfds finds a bucket's dataset through etils, but array_record's C++ reader opens local
      # files only: records in a bucket cannot be read (checked: a read never returns).
      raise ConfigError(f'tfds:{name}:{split} data_dir={data_dir}: tfds: reads a local data_dir '
                        'only (array_record cannot read buckets); copy the prepared dataset to '
                        'local disk (gcloud storage cp -r) or convert it to wds: shards')
    import tensorflow_datasets as tfds  # Lazy: only tfds: specs pay the import.
    quiet = logging.getLogger('absl')  # tfds logs a warning per unprepared folder it looks at
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
      # download=False: a dataset is prepared beforehand (`tfds build`), never fetched by a run;
      # training hosts often have no internet, and a download would fill the default data_dir.
      self._ds = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises many kinds for a missing or unprepared dataset.
      raise ConfigError(f'tfds:{name}:{split} cannot be opened (data_dir={data_dir or "default"}): '
                        f'{str(e).splitlines()[0]}; prepare it first (tfds build {name}'
                        f'{" --data_dir " + data_dir if data_dir else ""}), a run never '
                        'downloads') from None
    finally:
      quiet.setLevel(level)
    self.name = f'{name}_{split}'.replace('/', '_').replace('[', '_').replace(']', '')
    self.image_key, self.caption_key, self.label_key = image_key, caption_key, label_key
    features = self._ds.dataset_info.features
    label = features[label_key] if label_key in features else None
    self.classnames = list(getattr(label, 'names', None) or [])

  def __len__(self) -> int:
    return len(self._ds)

  def text(self, i: int) -> list[str]:
    """The caption(s) of example i."""
    value = self._ds[i].get(self.caption_key)
    values = list(value) if isinstance(value, (list, np.ndarray)) and np.ndim(value) else [value]
    if not values:
      raise BadRecord('missing_caption', self.name, str(i), 'no caption')
    return [decode_caption(v.item() if isinstance(v, np.ndarray) else v, self.name, str(i))
            for v in values]

  def encoded_image(self, i: int) -> bytes | None:
    """Record i's image as stored when the dataset keeps it encoded; None for pixel arrays."""
    image = self._ds[i][self.image_key]
    return image if isinstance(image, bytes) else None

  def __getitem__(self, i: int) -> dict:
    example = self._ds[i]
    image = example[self.image_key]
    if isinstance(image, bytes):  # An encoded image feature left undecoded.
      image = decode_image(image, self.name, str(i), DEFAULT_MAX_PIXELS)
    else:
      image = array_to_image(image)
    record = {'image': image, 'key': str(i)}
    if self.label_key in example:
      record['label'] = int(example[self.label_key])
    if self.caption_key in example:
      captions = self.text(i)
      record['caption'], record['captions'] = captions[0], captions
    elif self.classnames and 'label' in record:
      record['caption'] = self.classnames[record['label']]
    return record

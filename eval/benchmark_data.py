"""CLIP_benchmark's webdataset copies of the standard sets, as eval sources.

A set NAME (e.g. `imagenet1k`, `vtab/cifar10`) lives in ROOT/wds_NAME' (NAME' is NAME with `/` as
`-`, CLIP_benchmark's `wds_{dataset_cleaned}`), local or in a bucket:

  ROOT/wds_NAME'/classnames.txt                          one class name per line, label order
  ROOT/wds_NAME'/zeroshot_classification_templates.txt   one template per line, `{c}` the name
  ROOT/wds_NAME'/<split>/*.tar                           samples: .webp/.jpg/.png + .cls or .txt

Samples with `.cls` make a classification set, samples with `.txt` (one caption a line) a
retrieval set. Class names and templates come from the folder when it has them, else from
CLIP_benchmark's metadata for NAME (eval.benchmark_meta). Shards are read by byte range through
data.wds, never extracted.
"""

import numpy as np

from data import storage
from data.errors import ConfigError
from data.records import DEFAULT_MAX_PIXELS
from data.tarindex import NONE
from data.wds import WdsSource
from eval import benchmark_meta

CLASSNAMES_FILE = 'classnames.txt'
TEMPLATES_FILE = 'zeroshot_classification_templates.txt'


def folder_name(name: str) -> str:
  """CLIP_benchmark's folder of a set: `vtab/cifar10` -> `wds_vtab-cifar10`."""
  return 'wds_' + name.replace('/', '-')


def dataset_folder(data_root: str, name: str) -> str:
  """ROOT/wds_NAME'."""
  return storage.join(data_root, folder_name(name))


def _lines(path: str) -> list[str] | None:
  """The non-empty lines of a text file, or None when there is no such file."""
  if not storage.is_file(path):
    return None
  return [line.strip() for line in storage.read_text(path).splitlines() if line.strip()]


class BenchmarkSource:
  """One split of a CLIP_benchmark-format set: the data.sources interface plus `task`,
  `classnames` and `templates` (None when neither the folder nor the metadata has them)."""

  def __init__(self, data_root: str, name: str, split: str = 'test',
               cache_dir: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS):
    folder = dataset_folder(data_root, name)
    storage.check_reachable(folder, f'benchmark {name}')
    if not storage.is_dir(folder):
      known = name in benchmark_meta.known_names()
      raise ConfigError(f'benchmark {name}: no folder {folder} ' + (
          "(CLIP_benchmark's wds_<name> layout; convert the set with clip_benchmark_export_wds)"
          if known else '(not a CLIP_benchmark set name either; a custom set needs that folder)'))
    shards = storage.join(folder, split, '*.tar')
    if not storage.glob(shards):
      raise ConfigError(f'benchmark {name}: no shards {shards} (is --split {split} right?)')
    self.wds = WdsSource(shards, cache_dir=cache_dir, max_pixels=max_pixels)
    self.wds.name = name  # bad records name the set, not the shard pattern
    self.name, self.split, self.folder = name, split, folder
    self.problems = self.wds.problems
    self.task = self._task()
    if self.task == 'classification':
      own = _lines(storage.join(folder, CLASSNAMES_FILE))
      self.classnames = own or benchmark_meta.builtin_classnames(name)
      self.templates = _lines(storage.join(folder, TEMPLATES_FILE)) or \
          benchmark_meta.builtin_templates(name)
    else:
      self.classnames = self.templates = None

  def _task(self) -> str:
    """Classification when the samples carry .cls, retrieval when they carry captions."""
    if not len(self.wds):
      raise ConfigError(f'benchmark {self.name}: {self.folder}/{self.split} holds no samples')
    if self.wds.label_texts is not None:
      return 'classification'
    if any(np.any(rows[:, 2] != NONE) for rows in self.wds.shard_rows):  # a caption member
      return 'retrieval'
    raise ConfigError(f'benchmark {self.name}: samples carry neither .cls (classification) nor '
                      '.txt (retrieval); multilabel .npy sets (voc2007_multilabel) are not '
                      'supported: leave them out of --benchmarks')

  def __len__(self) -> int:
    return len(self.wds)

  def __getitem__(self, i: int) -> dict:
    return self.wds[i]

  def text(self, i: int) -> list[str]:
    """Every caption of sample i."""
    return self.wds.text(i)

  def encoded_image(self, i: int) -> bytes:
    """Sample i's image as stored."""
    return self.wds.encoded_image(i)

  def labels(self) -> np.ndarray:
    """Every sample's class index, from the index (no image read)."""
    return np.array([self.wds.label(i) for i in range(len(self.wds))], np.int64)


def open_benchmark(data_root: str, name: str, split: str = 'test', image_size: int = 224,
                   seed: int = 0, cache_dir: str | None = None,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> BenchmarkSource:
  """The set NAME under `data_root` (local or gs://); image_size and seed are open_source's
  arguments, which file sources ignore (images are resized by the eval transform)."""
  del image_size, seed
  return BenchmarkSource(data_root, name, split, cache_dir=cache_dir, max_pixels=max_pixels)

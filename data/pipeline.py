"""The grain training pipeline.

The stream of record indices is defined globally (shuffle per epoch, repeat, cut into global batches
of B), and process p of P reads only rows [p*b, (p+1)*b) of each global batch (b = B / P). So every
process reads a disjoint slice, the slices cover the data, and the global batch at step t is the same
set of examples whatever the number of processes. Augmentation randomness is seeded by the global
position, so it does not depend on the process layout either.
"""

import dataclasses

import grain
import numpy as np

from data.tokenizers import Tokenizer
from data.transforms import train_transform


class ProcessSlice:
  """Random-access view of one process's rows of the global stream: i -> (position, index)."""

  def __init__(self, order: grain.MapDataset, global_batch: int, process_index: int,
               process_count: int):
    if global_batch % process_count:
      raise ValueError(f'global batch {global_batch} not divisible by {process_count} processes')
    self._order = order
    self._global, self._local = global_batch, global_batch // process_count
    self._offset = process_index * self._local
    self._len = (len(order) // global_batch) * self._local

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, i: int) -> tuple[int, int]:
    step, row = divmod(int(i), self._local)
    position = step * self._global + self._offset + row
    return position, int(self._order[position])


@dataclasses.dataclass
class PrepareExample:
  """(global position, record index) -> {'image': uint8 [S,S,3], 'text': int32 [T]}."""

  source: object
  tokenizer: Tokenizer
  image_size: int
  resize: int
  flip: bool
  context_length: int
  seed: int

  def __call__(self, item: tuple[int, int]) -> dict:
    position, index = item
    record = self.source[index]
    rng = np.random.default_rng((self.seed, position))
    image = train_transform(record['image'], self.image_size, self.resize, self.flip, rng)
    text = self.tokenizer.encode([record['caption']], self.context_length)[0]
    return {'image': image, 'text': text}


def train_dataset(source, tokenizer: Tokenizer, data_cfg, *, image_size: int, context_length: int,
                  global_batch: int, seed: int, process_index: int,
                  process_count: int) -> grain.IterDataset:
  """This process's batches of the infinite, per-epoch shuffled training stream."""
  order = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat(None)
  prepare = PrepareExample(source, tokenizer, image_size, data_cfg.resize or image_size,
                           data_cfg.flip, context_length, seed)
  ds = grain.MapDataset.source(ProcessSlice(order, global_batch, process_index, process_count))
  ds = ds.map(prepare).batch(global_batch // process_count, drop_remainder=True)
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=data_cfg.num_threads,
                                              prefetch_buffer_size=data_cfg.prefetch))

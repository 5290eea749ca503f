"""The grain training pipeline.

The stream of record indices is defined globally (shuffle per epoch, repeat, cut into global batches
of B), and process p of P reads only rows [p*b, (p+1)*b) of each global batch (b = B / P). So every
process reads a disjoint slice, the slices cover the data, and the global batch at step t is the same
set of examples whatever the number of processes. Augmentation randomness is seeded by the global
position, so it does not depend on the process layout either.
"""

import collections
import dataclasses
import sys
import threading

import grain
from grain.experimental import index_shuffle
import numpy as np

from data.errors import require
from data.records import BAD_KINDS, BadRecord, BrokenSource, check_bad_policy
from data.tokenizer import Tokenizer
from data.transforms import AUGMENTS, random_resized_crop, train_transform

# A bad record is replaced by the next readable record in index order; this many in a row is a
# broken source, not a few bad records.
MAX_CONSECUTIVE_BAD = 100


class BadRecordLog:
  """Logs each bad record's source, key and reason once per process."""

  def __init__(self):
    self._seen, self._lock = set(), threading.Lock()

  def __getstate__(self) -> dict:
    return {}  # grain ships transforms to worker processes: each starts with its own log.

  def __setstate__(self, state: dict) -> None:
    self.__init__()

  def __call__(self, error: BadRecord) -> None:
    with self._lock:
      if (error.source, error.key) in self._seen:
        return
      self._seen.add((error.source, error.key))
    print(f'warning: skipping {error}', file=sys.stderr, flush=True)


def check_process_split(global_batch: int, process_count: int) -> None:
  """The global batch splits evenly over processes, each reading one contiguous block of rows."""
  require(global_batch % process_count == 0,
          f'batch_size {global_batch} is not divisible by the {process_count} processes')


def grain_shuffle_is_a_permutation(n: int) -> bool:
  """Whether grain's index_shuffle permutes range(n). It does not when n - 1 = 2**k for an even
  k >= 16 (n = 65537, 262145, ..., 4**15 + 1): its cipher block is then one bit too narrow, so
  index n - 1 lands where index 0 does (one record twice per epoch, another never)."""
  k = (n - 1).bit_length() - 1
  return not (n > 1 and n - 1 == 1 << k and k % 2 == 0 and k >= 16)


class EpochOrder:
  """Position -> record index of the endless training stream: epoch e is a permutation of range(n)
  seeded by (seed + e) mod 2**32, computed per position in O(1) memory (no per-record table).

  Position for position the order of grain's MapDataset.range(n).shuffle(seed).repeat(None) (the
  same call to grain's index_shuffle; n up to 2**64), except for the n where that is not a
  permutation: there a permutation of range(n + 1) walks past n (cycle-walking), which is one.
  """

  def __init__(self, n: int, seed: int):
    self.n, self.seed = n, seed
    self._walk = not grain_shuffle_is_a_permutation(n)

  def __len__(self) -> int:
    return sys.maxsize

  def __getitem__(self, position: int) -> int:
    epoch, index = divmod(int(position), self.n)
    if self.n == 1:
      return 0
    seed = (self.seed + epoch) % 2**32
    if not self._walk:
      return index_shuffle(index, max_index=self.n - 1, seed=seed, rounds=4)
    index = index_shuffle(index, max_index=self.n, seed=seed, rounds=4)
    while index == self.n:
      index = index_shuffle(index, max_index=self.n, seed=seed, rounds=4)
    return index


class ProcessSlice:
  """Random-access view of one process's rows of the global stream: i -> (position, index)."""

  def __init__(self, order: 'EpochOrder', global_batch: int, process_index: int,
               process_count: int):
    check_process_split(global_batch, process_count)
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


def shard_files(source) -> int:
  """How many shard files a source (or each part of a mixture) reads; 0 for unsharded sources."""
  return sum(len(getattr(part, 'paths', ())) for part in getattr(source, 'components', [source]))


def corpus_statistics(source, global_batch: int, process_index: int, process_count: int) -> str:
  """One line for the start of training: samples, shards, bad shards, this process's share."""
  shards = shard_files(source)
  bad = collections.Counter(p.kind.replace('_shard', '') for p in getattr(source, 'problems', []))
  bad_text = ', '.join(f'{n} {kind}' for kind, n in sorted(bad.items())) or 'none'
  local = global_batch // process_count
  files = f' in {shards} shard files' if shards else ''
  return (f'data: {len(source):,} samples{files}; bad shards: {bad_text}; '
          f'process {process_index} of {process_count} reads rows {process_index * local}..'
          f'{(process_index + 1) * local - 1} of each global batch of {global_batch}: '
          f'{len(source) / process_count:,.0f} samples per epoch')


@dataclasses.dataclass
class PrepareExample:
  """(global position, record index) -> {'image': uint8 [S,S,3], 'text': int32 [T], 'bad': [K]}.

  `bad` counts, by kind, the record at this position if it was bad (policy 'skip'); the records
  tried while looking for its substitute are not counted again, so over an epoch every bad record
  is counted exactly once. With policy 'error' the BadRecord propagates.
  """

  source: object
  tokenizer: Tokenizer
  image_size: int
  resize: int
  flip: bool
  context_length: int
  seed: int
  on_bad_record: str = 'skip'
  augment: str = 'resize_crop'  # data.transforms.AUGMENTS
  rrc_scale: tuple[float, float] = (0.9, 1.0)
  log: BadRecordLog = dataclasses.field(default_factory=BadRecordLog)

  def _read(self, index: int, bad: np.ndarray) -> dict:
    tries = min(MAX_CONSECUTIVE_BAD, len(self.source))
    for attempt in range(tries):
      try:
        return self.source[(index + attempt) % len(self.source)]
      except BadRecord as e:
        if self.on_bad_record == 'error':
          raise
        if attempt == 0:
          bad[BAD_KINDS.index(e.kind)] += 1
        self.log(e)
        last = e
    whole = 'every record' if tries == len(self.source) else f'{tries} records in a row'
    raise BrokenSource(f'{whole} of {self.source.name} is bad (read from index {index}), the '
                       f'last: {last}; the source looks broken')

  def __call__(self, item: tuple[int, int]) -> dict:
    position, index = item
    bad = np.zeros(len(BAD_KINDS), np.int32)
    record = self._read(index, bad)
    rng = np.random.default_rng((self.seed, position))
    if self.augment == 'random_resized_crop':
      image = random_resized_crop(record['image'], self.image_size, self.rrc_scale, self.flip, rng)
    else:
      image = train_transform(record['image'], self.image_size, self.resize, self.flip, rng)
    text = self.tokenizer.encode([record['caption']], self.context_length)[0]
    return {'image': image, 'text': text, 'bad': bad}


def check_augment(augment: str, rrc_scale: tuple[float, float]) -> None:
  """`data.augment` is known and `data.rrc_scale` is a range (low <= high) of area shares."""
  require(augment in AUGMENTS, f'unknown data.augment {augment!r}; known: {", ".join(AUGMENTS)}')
  require(len(rrc_scale) == 2 and 0 < rrc_scale[0] <= rrc_scale[1] <= 1,
          f'data.rrc_scale {rrc_scale} is not (low, high) with 0 < low <= high <= 1')


def train_dataset(source, tokenizer: Tokenizer, data_cfg, *, image_size: int, context_length: int,
                  global_batch: int, seed: int, process_index: int,
                  process_count: int) -> grain.IterDataset:
  """This process's batches of the infinite, per-epoch shuffled training stream."""
  check_bad_policy(data_cfg.on_bad_record)
  # Configs written before these fields existed (and tests' small data configs) mean the default.
  augment = getattr(data_cfg, 'augment', 'resize_crop')
  rrc_scale = tuple(getattr(data_cfg, 'rrc_scale', (0.9, 1.0)))
  check_augment(augment, rrc_scale)
  for part in getattr(source, 'components', [source]):  # else a StopIteration deep in grain
    require(len(part) > 0, f'the training data {part.name} has no records')
  order = EpochOrder(len(source), seed)
  prepare = PrepareExample(source, tokenizer, image_size, data_cfg.resize or image_size,
                           data_cfg.flip, context_length, seed, data_cfg.on_bad_record, augment,
                           rrc_scale)
  ds = grain.MapDataset.source(ProcessSlice(order, global_batch, process_index, process_count))
  ds = ds.map(prepare).batch(global_batch // process_count, drop_remainder=True)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=data_cfg.num_threads,
                                            prefetch_buffer_size=data_cfg.prefetch))
  if data_cfg.workers > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_cfg.workers))
  return ds

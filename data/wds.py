"""`wds:PATTERN` — webdataset tar shards on disk or in a bucket, read by offset, never extracted.

A sample is the tar members sharing a key (the member path up to the first dot of its base name):
an image (.jpg .jpeg .png .webp) and a caption (.txt, or .json with a "caption" field); a .txt of
several lines is several captions (evaluation uses all, training the first); a .cls member holds a
class index (CLIP_benchmark's classification sets), kept in the index file. Start-up reads one
small index file per shard (data/tarindex.py; written by `python -m data.index`, or here, with
progress, for the shards that lack one) and keeps 16 bytes per sample in numpy arrays. An index
is used while the shard's version stamp (size and modification time locally; size and generation /
ETag in a bucket) is the one it was made from. A truncated shard keeps the complete samples before
the cut. A sample is read by byte range (one read for a sample whose image and caption are
neighbours, the key from the tar header before the data) through a handle each thread keeps open
per shard.
"""

import collections
import json
import re
import threading

import numpy as np

from data import storage
from data.records import DEFAULT_MAX_PIXELS, BadRecord, decode_caption, decode_image
from data.errors import ConfigError
from data.tarindex import (BESIDE, BLOCK, CAPTION_EXTS, IMAGE_EXTS, JSON_BIT, NONE, SUFFIX,
                           index_shards, key_from_header)

__all__ = ['CAPTION_EXTS', 'IMAGE_EXTS', 'ShardReaders', 'WdsSource', 'expand_pattern']
_BRACES = re.compile(r'\{(\d+)\.\.(\d+)\}')
# Image and caption read in one range when no more than this lies between them (else two reads).
MAX_GAP = 64 << 10
START_WORKERS = 16  # threads reading index files at start-up


def expand_pattern(pattern: str) -> list[str]:
  """Brace ranges (`{000..099}`, zero padding kept) then globs; sorted, de-duplicated; a glob
  leaves out the index files kept beside the shards."""
  match = _BRACES.search(pattern)
  if match:
    lo, hi = match.group(1), match.group(2)
    width = len(lo)
    out = []
    for n in range(int(lo), int(hi) + 1):
      out.extend(expand_pattern(pattern[:match.start()] + str(n).zfill(width) + pattern[match.end():]))
    return out
  if any(c in pattern for c in '*?['):
    return [p for p in storage.glob(pattern) if not p.endswith(SUFFIX)]
  return [pattern]


class ShardReaders:
  """Byte ranges of shards through handles kept open, per thread, opened on first use.

  grain reads with several threads (a handle's seek+read is not atomic) and ships the source to
  worker processes: handles are never shared across threads nor copied to another process, where
  each opens its own. At most `keep` stay open per thread (least recently used closed first), so
  thousands of shards do not exhaust file descriptors. Shards in a bucket take no handle: each
  read is one ranged GET (storage.read_range), so a shuffled read over thousands of shards never
  pays a reopen (a metadata request) when the handle cache has moved on.
  """

  def __init__(self, paths: list[str], keep: int = 64):
    self.paths, self.keep = paths, keep
    self._bucket = [storage.is_bucket(path) for path in paths]
    self._local = threading.local()

  def __getstate__(self) -> dict:
    return {'paths': self.paths, 'keep': self.keep}

  def __setstate__(self, state: dict) -> None:
    self.__init__(**state)

  def read(self, shard: int, offset: int, length: int) -> bytes:
    """`length` bytes of shard `shard` from `offset`."""
    if self._bucket[shard]:  # a ranged GET needs no handle: none to reopen when the LRU drops it
      return storage.read_range(self.paths[shard], offset, length)
    handles = getattr(self._local, 'handles', None)
    if handles is None:
      handles = self._local.handles = collections.OrderedDict()
    handle = handles.pop(shard, None)
    if handle is None:
      handle = storage.open_reader(self.paths[shard])
      while len(handles) >= self.keep:
        handles.popitem(last=False)[1].close()
    handles[shard] = handle  # most recently used last
    handle.seek(offset)
    return handle.read(length)


class WdsSource:
  """Random access over the samples of a set of shards.

  In memory: `shard_rows` (per shard, uint32 [n, 4]: image block, image length, caption block,
  caption length; see data/tarindex.py; a view of the index file's bytes as read, never copied)
  and `starts` (int64 [shards + 1], the first sample of each shard), so a global index finds its
  shard by binary search; no Python object per sample.
  """

  def __init__(self, pattern: str, cache_dir: str | None = None, index_dir: str | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS):
    storage.check_reachable(pattern, 'wds data path')
    if index_dir:
      storage.check_reachable(index_dir, 'data.index_dir')
    self.paths = expand_pattern(pattern)
    versions = storage.version_stamps(self.paths)
    missing = [p for p, v in zip(self.paths, versions) if v is None]
    if not self.paths or missing:
      raise ConfigError(f'wds data path {missing[0] if missing else pattern} does not exist')
    self.name = pattern.split('{')[0].rstrip('-_/').rsplit('/', 1)[-1] or 'wds'
    self.max_pixels = max_pixels
    folders = [index_dir, BESIDE] if index_dir else [BESIDE, *([cache_dir] if cache_dir else [])]
    write_to = index_dir or cache_dir
    kept = f'written to {write_to}' if write_to else 'kept in memory only'
    announce = lambda missing, total: (
        f'data index: {missing} of {total} shards of {pattern} have no index file; indexing them '
        f'now ({kept}). `python -m data.index wds:{pattern} [--out DIR]` once (then '
        f'data.index_dir=DIR) spares every run this.')
    indexes, self.built = index_shards(self.paths, versions, folders, write_to, START_WORKERS,
                                       'data index', announce)
    self.problems = [
        BadRecord('truncated_shard', self.name, storage.basename(path),
                  'tar shard is truncated; its complete samples are kept')
        for path, index in zip(self.paths, indexes) if index.truncated]
    self.shard_rows = [index.rows for index in indexes]
    # .cls texts, for labelled (evaluation) sets only: a training corpus has none, so no list.
    self.label_texts = None if all(index.labels is None for index in indexes) else [
        text for index in indexes for text in (index.labels or [None] * len(index.rows))]
    self.starts = np.cumsum([0] + [len(rows) for rows in self.shard_rows], dtype=np.int64)
    self._readers = ShardReaders(self.paths)

  def __len__(self) -> int:
    return int(self.starts[-1])

  def shard_of(self, i: int) -> int:
    """The shard holding sample i."""
    return int(np.searchsorted(self.starts, i, side='right')) - 1

  def row(self, i: int) -> np.ndarray:
    """Sample i's index row (uint32 [4])."""
    shard = self.shard_of(i)
    return self.shard_rows[shard][i - int(self.starts[shard])]

  def index_bytes(self) -> int:
    """Bytes of index this process holds: 16 per sample, 8 per shard."""
    return sum(rows.nbytes for rows in self.shard_rows) + self.starts.nbytes

  def _fetch(self, i: int, image: bool, caption: bool) -> tuple[str, bytes | None, bytes | None,
                                                                  bool]:
    """(key, image bytes, caption bytes, caption is .json) of sample i; None for a member not
    asked for or absent. Members within MAX_GAP of each other come in one read."""
    shard = self.shard_of(i)
    img_block, img_len, cap_block, cap_len = (
        int(v) for v in self.shard_rows[shard][i - int(self.starts[shard])])
    is_json, cap_len = bool(cap_len & JSON_BIT), cap_len & ~JSON_BIT
    wanted = {}
    if image and img_block != NONE:
      wanted['image'] = (img_block * BLOCK, img_len)
    if caption and cap_block != NONE:
      wanted['caption'] = (cap_block * BLOCK, cap_len)
    if not wanted:  # only the key is needed: the header of a member the sample has
      wanted['key'] = ((img_block if img_block != NONE else cap_block) * BLOCK, 0)
    lo = min(off for off, _ in wanted.values()) - BLOCK  # the first member's tar header
    hi = max(off + n for off, n in wanted.values())
    if hi - lo <= sum(n for _, n in wanted.values()) + MAX_GAP:
      data = self._readers.read(shard, lo, hi - lo)
      got = {name: data[off - lo:off - lo + n] for name, (off, n) in wanted.items()}
      header = data[:BLOCK]
    else:
      got = {name: self._readers.read(shard, off - BLOCK, n + BLOCK)
             for name, (off, n) in wanted.items()}
      header = got[min(wanted, key=lambda name: wanted[name][0])][:BLOCK]
      got = {name: raw[BLOCK:] for name, raw in got.items()}
    key = f'{storage.basename(self.paths[shard])}/{key_from_header(header)}'
    return key, got.get('image'), got.get('caption'), is_json

  def _captions(self, key: str, raw: bytes | None, is_json: bool) -> list[str]:
    if raw is None:
      raise BadRecord('missing_caption', self.name, key, 'sample has no .txt or .json caption')
    if is_json:
      try:
        raw = json.loads(raw).get('caption')
      except (ValueError, AttributeError):
        raise BadRecord('missing_caption', self.name, key, '.json has no "caption"') from None
      return [decode_caption(raw, self.name, key)]
    text = decode_caption(raw, self.name, key)
    return [line.strip() for line in text.splitlines() if line.strip()]

  def text(self, i: int) -> list[str]:
    """Every caption of sample i (a .txt holds one per line), without reading its image."""
    key, _, raw, is_json = self._fetch(i, image=False, caption=True)
    return self._captions(key, raw, is_json)

  def label(self, i: int, key: str | None = None) -> int:
    """Sample i's class index, from its .cls member (`key`: for the error, when known)."""
    text = None if self.label_texts is None else self.label_texts[i]
    try:
      return int(text)
    except (TypeError, ValueError):
      what = ('sample has no .cls member' if text is None
              else f'.cls is not an integer: {text[:20]!r}')
      raise BadRecord('missing_file', self.name, key or self._fetch(i, False, False)[0],
                      what) from None

  def encoded_image(self, i: int) -> bytes:
    """Sample i's image member as stored (not decoded)."""
    key, image, _, _ = self._fetch(i, image=True, caption=False)
    if image is None:
      raise BadRecord('missing_file', self.name, key, 'sample has no image member')
    return image

  def __getitem__(self, i: int) -> dict:
    key, encoded, raw, is_json = self._fetch(i, image=True, caption=True)
    record = {'key': key}
    if self.label_texts is not None and self.label_texts[i] is not None:
      record['label'] = self.label(i, key)  # a classification sample needs no caption
    if raw is not None or 'label' not in record:
      captions = self._captions(key, raw, is_json)
      record.update(caption=captions[0], captions=captions)
    if encoded is None:
      raise BadRecord('missing_file', self.name, key, 'sample has no image member')
    record['image'] = decode_image(encoded, self.name, key, self.max_pixels)
    return record


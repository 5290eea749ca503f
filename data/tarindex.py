"""Index files of webdataset tar shards: one small binary file per shard, numpy rows in memory.

A shard's index is one row of 4 uint32 per sample (16 bytes): image block, image length,
caption block, caption length (and, for sets with `.cls` members, CLIP_benchmark's classification sets, each
sample's label text in the header). Tar member data always starts on a 512-byte block, so a block number
addresses shards up to 2 TiB; NONE as a block marks an absent member, and the top bit of the
caption length a `.json` caption (else `.txt`). Keys are not kept: a member's key is the name in
the 512-byte tar header just before its data, read together with the data.

The file: MAGIC, one JSON header line ({"stamp": [shard URL or absolute path, size, version],
"truncated": bool, "samples": n[, "labels": [.cls text or null per sample]]}), then the rows as little-endian uint32. No pickle.
It lives beside the shard (`SHARD.wdsidx`) or in an index folder (`NAME-CRC32.wdsidx`, the CRC of
the shard's full path, so one folder can hold the indexes of several corpora).
"""

import json
import posixpath
import sys
import tarfile
import threading
import time
import typing
import zlib

import numpy as np

from data import storage
from data.errors import ConfigError

IMAGE_EXTS = ('jpg', 'jpeg', 'png', 'webp')
CAPTION_EXTS = ('txt', 'json')
LABEL_EXTS = ('cls',)  # a class index as text: a few bytes, so kept in the index file itself
SUFFIX = '.wdsidx'
MAGIC = b'WDSIDX1\n'
BLOCK = 512
NONE = 0xFFFFFFFF      # block of an absent member
JSON_BIT = 1 << 31     # in the caption length: the caption is a .json
BESIDE = ''            # an index location: beside each shard, not in a folder


class ShardIndex(typing.NamedTuple):
  """One shard's index: rows uint32 [n, 4], whether the shard is truncated, and the samples'
  `.cls` texts (None for a shard without any: training corpora keep 16 bytes a sample)."""
  rows: np.ndarray
  truncated: bool
  labels: list[str | None] | None = None


def split_name(name: str) -> tuple[str, str]:
  """A tar member name -> (key, lower-case extension): the key runs to the base name's first dot."""
  folder, base = posixpath.split(name)  # tar member names use '/'
  stem, _, ext = base.partition('.')
  return posixpath.join(folder, stem), ext.lower()


def key_from_header(header: bytes) -> str:
  """The sample key of the member whose 512-byte ustar header this is (names over 255 characters,
  kept by tar in extra headers, show here as their first 100)."""
  name = header[:100].split(b'\0', 1)[0]
  if header[257:265] == b'ustar\x0000':  # POSIX ustar: a prefix field extends the name
    prefix = header[345:500].split(b'\0', 1)[0]
    name = prefix + b'/' + name if prefix else name
  return split_name(name.decode('utf-8', 'replace'))[0]


def _row(parts: dict[str, tuple[int, int]]) -> list[int] | None:
  """A sample's row from {ext: (data offset, size)}; None if it has neither image nor caption or a
  member too large to address (>= 4 GiB image, >= 2 GiB caption)."""
  image_ext = next((e for e in IMAGE_EXTS if e in parts), None)
  caption_ext = next((e for e in CAPTION_EXTS if e in parts), None)
  if image_ext is None and caption_ext is None:
    return None  # Not a sample (e.g. a lone metadata file).
  row = [NONE, 0, NONE, 0]
  if image_ext:
    offset, size = parts[image_ext]
    if size >= NONE:
      return None
    row[0:2] = offset // BLOCK, size
  if caption_ext:
    offset, size = parts[caption_ext]
    if size >= JSON_BIT:
      return None
    row[2:4] = offset // BLOCK, size | (JSON_BIT if caption_ext == 'json' else 0)
  return row


def scan_shard(path: str, size: int) -> ShardIndex:
  """The index of a shard of `size` bytes, by one pass over its headers.

  Samples come in the order of their first member. A truncated shard keeps the members before
  the cut.
  """
  if size >= NONE * BLOCK:
    raise ConfigError(f'wds shard {path} is {size} bytes; index files address shards < 2 TiB')
  members, labels, truncated = {}, {}, False
  try:
    # One front-to-back pass with read-ahead: headers sit between members, so a bucket shard
    # costs a few large GETs, not one per member.
    with storage.open_reader(path, sequential=True) as f, tarfile.open(fileobj=f, mode='r:') as tar:
      for info in tar:
        if not info.isfile():
          continue
        if info.offset_data + info.size > size:
          truncated = True
          break
        key, ext = split_name(info.name)
        members.setdefault(key, {})[ext] = (info.offset_data, info.size)
        if ext in LABEL_EXTS:  # read in passing: the scan's read-ahead already holds it
          labels[key] = tar.extractfile(info).read().decode('utf-8', 'replace').strip()
  except (tarfile.ReadError, EOFError, OSError):
    truncated = True
  rows, row_labels = [], []
  for key, parts in members.items():
    row = _row(parts)
    if row is not None:
      rows.append(row)
      row_labels.append(labels.get(key))
  return ShardIndex(np.array(rows, np.uint32).reshape(-1, 4), truncated,
                    row_labels if labels else None)


def encode(stamp: list, index: ShardIndex) -> bytes:
  """An index file's bytes."""
  header = {'stamp': stamp, 'truncated': index.truncated, 'samples': len(index.rows)}
  if index.labels is not None:
    header['labels'] = index.labels
  return MAGIC + json.dumps(header).encode() + b'\n' + index.rows.astype('<u4').tobytes()


def decode(data: bytes) -> tuple[dict, np.ndarray]:
  """(header, rows) of an index file's bytes; ValueError if it is not one (or is cut short)."""
  if not data.startswith(MAGIC):
    raise ValueError('not a wds index file')
  end = data.index(b'\n', len(MAGIC))
  header = json.loads(data[len(MAGIC):end])
  rows = np.frombuffer(data, '<u4', offset=end + 1)  # a view of `data`: no copy
  if len(rows) != 4 * header['samples']:
    raise ValueError('wds index file is cut short')
  return header, rows.reshape(-1, 4)


def index_file(shard: str, folder: str) -> str:
  """Where a shard's index lives: beside it (folder BESIDE) or in `folder`."""
  if folder == BESIDE:
    return shard + SUFFIX
  crc = zlib.crc32(storage.absolute(shard).encode())
  return storage.join(folder, f'{storage.basename(shard)}-{crc:08x}{SUFFIX}')


def shard_stamp(shard: str, version: list) -> list:
  """What an index file must match: the shard's full path and its [size, version] stamp."""
  return [storage.absolute(shard), *version]


def _matching(data: bytes | None, stamp: list) -> ShardIndex | None:
  """The index in an index file's bytes if it was made from this version of the shard."""
  try:
    header, rows = decode(data)
  except (TypeError, ValueError, KeyError):  # absent (None), not an index file, or cut short
    return None
  if header.get('stamp') != stamp:
    return None
  return ShardIndex(rows, bool(header['truncated']), header.get('labels'))


def read_index(shard: str, version: list, folders: list[str]) -> ShardIndex | None:
  """The index from the first folder holding an index of this version of the shard."""
  for folder in folders:
    try:
      index = _matching(storage.read_bytes(index_file(shard, folder)), shard_stamp(shard, version))
    except OSError:
      continue
    if index is not None:
      return index
  return None


def read_indexes(shards: list[str], versions: list[list],
                 candidates: list[list[str]]) -> list[ShardIndex | None]:
  """Each shard's index from the first of its candidate folders, all fetched in one batch (the
  later candidates are tried one by one, only where the first holds a stale index)."""
  first = [folders[0] if folders else None for folders in candidates]
  paths = [index_file(s, f) for s, f in zip(shards, first) if f is not None]
  data = iter(storage.read_many(paths))
  found = []
  for k, folder in enumerate(first):
    index = None if folder is None else _matching(next(data), shard_stamp(shards[k], versions[k]))
    if index is None and len(candidates[k]) > 1:
      index = read_index(shards[k], versions[k], candidates[k][1:])
    found.append(index)
  return found


def build_index(shard: str, version: list, folder: str | None) -> ShardIndex:
  """Scans the shard; writes its index file into `folder` (None: keep it in memory only)."""
  index = scan_shard(shard, version[0])
  if folder is not None:
    try:
      storage.write_bytes(index_file(shard, folder), encode(shard_stamp(shard, version), index))
    except OSError as e:  # e.g. read-only shards: the index is still used, only not kept
      print(f'warning: cannot write the index of {shard} ({storage.first_line(e)})',
            file=sys.stderr, flush=True)
  return index


class Progress:
  """Thread-safe progress lines (shards done/total, samples, rate, ETA), one per `every` s."""

  def __init__(self, what: str, total: int, every: float = 2.0):
    self.what, self.total, self.every = what, total, every
    self.done = self.samples = 0
    self._start = self._last = time.monotonic()
    self._lock = threading.Lock()

  def add(self, samples: int) -> None:
    """One more shard of `samples` samples done."""
    with self._lock:
      self.done, self.samples = self.done + 1, self.samples + samples
      now = time.monotonic()
      if now - self._last >= self.every or self.done == self.total:
        self._last = now
        rate = self.done / max(now - self._start, 1e-9)
        eta = (self.total - self.done) / rate
        print(f'{self.what}: {self.done}/{self.total} shards, {self.samples:,} samples, '
              f'{rate:.1f} shards/s, ETA {eta:.0f} s', flush=True)


def index_shards(shards: list[str], versions: list[list], folders: list[str],
                 write_to: str | None, workers: int, what: str = 'index',
                 announce=None) -> tuple[list, int]:
  """([ShardIndex] per shard, how many were built): read from `folders`, else scanned (with
  progress, after printing announce(missing, total)) and written to `write_to`."""
  # Which index files exist, from one listing per folder: a bucket is not asked for thousands of
  # files it does not hold.
  listed = {folder: storage.version_stamps([index_file(s, folder) for s in shards])
            for folder in folders}
  found = read_indexes(shards, versions, [
      [folder for folder in folders if listed[folder][k] is not None] for k in range(len(shards))])
  todo = [k for k, index in enumerate(found) if index is None]
  if todo:
    if announce:
      print(announce(len(todo), len(shards)), flush=True)
    progress = Progress(what, len(todo))

    def build(k: int) -> ShardIndex:
      index = build_index(shards[k], versions[k], write_to)
      progress.add(len(index.rows))
      return index

    for k, index in zip(todo, storage.map_in_threads(build, todo, workers)):
      found[k] = index
  return found, len(todo)

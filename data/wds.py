"""`wds:PATTERN` — webdataset tar shards on disk or in a bucket, read by offset, never extracted.

A sample is the tar members sharing a key (the member path up to the first dot of its base name):
an image (.jpg .jpeg .png .webp) and a caption (.txt, or .json with a "caption" field); a .txt of
several lines is several captions (evaluation uses all, training the first); a .cls member holds a
class index (CLIP_benchmark's classification sets), read while indexing. Each shard is indexed
once (member offsets), cached as JSON in `cache_dir` (beside the run: in its bucket when the
workdir is one), and rebuilt when the shard's version stamp changes (size and modification time
locally; size and generation / ETag in a bucket). A truncated shard keeps the complete samples
before the cut. Members are read by byte range through a handle each thread keeps open per shard.
"""

import collections
import concurrent.futures
import json
import posixpath
import re
import tarfile
import threading
import zlib

from data import storage
from data.records import DEFAULT_MAX_PIXELS, BadRecord, decode_caption, decode_image
from data.errors import ConfigError

IMAGE_EXTS = ('jpg', 'jpeg', 'png', 'webp')
CAPTION_EXTS = ('txt', 'json')
LABEL_EXTS = ('cls',)  # a class index as text: a few bytes, so kept in the index itself
_BRACES = re.compile(r'\{(\d+)\.\.(\d+)\}')


def expand_pattern(pattern: str) -> list[str]:
  """Brace ranges (`{000..099}`, zero padding kept) then globs; sorted, de-duplicated."""
  match = _BRACES.search(pattern)
  if match:
    lo, hi = match.group(1), match.group(2)
    width = len(lo)
    out = []
    for n in range(int(lo), int(hi) + 1):
      out.extend(expand_pattern(pattern[:match.start()] + str(n).zfill(width) + pattern[match.end():]))
    return out
  if any(c in pattern for c in '*?['):
    return storage.glob(pattern)
  return [pattern]


def _split_name(name: str) -> tuple[str, str]:
  folder, base = posixpath.split(name)  # tar member names use '/'
  stem, _, ext = base.partition('.')
  return posixpath.join(folder, stem), ext.lower()


def index_shard(path: str) -> dict:
  """{'samples': [[key, img_off, img_len, cap_off, cap_len, cap_ext], ...], 'truncated': bool,
  'labels': [the .cls text of each sample, or None]}."""
  members, labels, truncated = {}, {}, False
  size = storage.version_stamp(path)[0]
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
        key, ext = _split_name(info.name)
        members.setdefault(key, {})[ext] = (info.offset_data, info.size)
        if ext in LABEL_EXTS:  # read in passing: the scan's read-ahead already holds it
          labels[key] = tar.extractfile(info).read().decode('utf-8', 'replace').strip()
  except (tarfile.ReadError, EOFError, OSError):
    truncated = True
  samples, sample_labels = [], []
  for key, parts in members.items():
    image = next((parts[e] for e in IMAGE_EXTS if e in parts), None)
    caption_ext = next((e for e in CAPTION_EXTS if e in parts), None)
    if image is None and caption_ext is None:
      continue  # Not a sample (e.g. a lone metadata file).
    cap = parts[caption_ext] if caption_ext else (-1, 0)
    samples.append([key, *(image or (-1, 0)), *cap, caption_ext or ''])
    sample_labels.append(labels.get(key))
  return {'samples': samples, 'truncated': truncated, 'labels': sample_labels}


def cached_index(path: str, cache_dir: str | None) -> dict:
  """The shard's index, from the cache when the shard is unchanged.

  The stamp holds the shard's full path or URL and its version stamp, so a cache shared by runs
  never mistakes one shard for another, nor a replaced shard for the one it replaced.
  """
  stamp = [storage.absolute(path), *storage.version_stamp(path)]
  cache = None
  if cache_dir:
    cache = storage.join(cache_dir, f'wds_{zlib.crc32(stamp[0].encode()):08x}.json')
    try:
      cached = json.loads(storage.read_text(cache))
      if cached['stamp'] == stamp and 'labels' in cached:  # older caches had no labels
        return cached
    except (OSError, ValueError, KeyError):
      pass
  index = {'stamp': stamp, **index_shard(path)}
  if cache:
    storage.makedirs(cache_dir)
    storage.write_text(cache, json.dumps(index))
  return index


def _map(function, paths: list[str]) -> list:
  """function(path) for each path; over bucket paths in parallel, each a few requests' latency."""
  if not any(storage.is_bucket(p) for p in paths):
    return [function(p) for p in paths]
  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    return list(pool.map(function, paths))


class ShardReaders:
  """Byte ranges of shards through handles kept open, per thread, opened on first use.

  grain reads with several threads (a handle's seek+read is not atomic) and ships the source to
  worker processes: handles are never shared across threads nor copied to another process, where
  each opens its own. At most `keep` stay open per thread (least recently used closed first), so
  thousands of shards do not exhaust file descriptors or connections.
  """

  def __init__(self, paths: list[str], keep: int = 64):
    self.paths, self.keep = paths, keep
    self._local = threading.local()

  def __getstate__(self) -> dict:
    return {'paths': self.paths, 'keep': self.keep}

  def __setstate__(self, state: dict) -> None:
    self.__init__(**state)

  def read(self, shard: int, offset: int, length: int) -> bytes:
    """`length` bytes of shard `shard` from `offset`."""
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
  """Random access over the samples of a set of shards."""

  def __init__(self, pattern: str, cache_dir: str | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS):
    storage.check_reachable(pattern, 'wds data path')
    self.paths = expand_pattern(pattern)
    missing = [p for p, found in zip(self.paths, _map(storage.is_file, self.paths)) if not found]
    if not self.paths or missing:
      raise ConfigError(f'wds data path {missing[0] if missing else pattern} does not exist')
    self.name = pattern.split('{')[0].rstrip('-_/').rsplit('/', 1)[-1] or 'wds'
    self.max_pixels = max_pixels
    self.samples, self.label_texts, self.problems = [], [], []
    indexes = _map(lambda path: cached_index(path, cache_dir), self.paths)
    for shard, (path, index) in enumerate(zip(self.paths, indexes)):
      self.samples.extend((shard, *s) for s in index['samples'])
      self.label_texts.extend(index['labels'])
      if index['truncated']:
        self.problems.append(BadRecord('truncated_shard', self.name, storage.basename(path),
                                       'tar shard is truncated; its complete samples are kept'))
    self._readers = ShardReaders(self.paths)

  def __len__(self) -> int:
    return len(self.samples)

  def _read(self, shard: int, offset: int, length: int) -> bytes:
    return self._readers.read(shard, offset, length)

  def _key(self, i: int) -> str:
    shard, key = self.samples[i][:2]
    return f'{storage.basename(self.paths[shard])}/{key}'

  def text(self, i: int) -> list[str]:
    """Every caption of sample i (a .txt holds one per line), without reading its image."""
    shard, _, _, _, cap_off, cap_len, cap_ext = self.samples[i]
    key = self._key(i)
    if cap_off < 0:
      raise BadRecord('missing_caption', self.name, key, 'sample has no .txt or .json caption')
    raw = self._read(shard, cap_off, cap_len)
    if cap_ext == 'json':
      try:
        raw = json.loads(raw).get('caption')
      except (ValueError, AttributeError):
        raise BadRecord('missing_caption', self.name, key, '.json has no "caption"') from None
      return [decode_caption(raw, self.name, key)]
    text = decode_caption(raw, self.name, key)
    return [line.strip() for line in text.splitlines() if line.strip()]

  def label(self, i: int) -> int:
    """Sample i's class index, from its .cls member."""
    text = self.label_texts[i]
    try:
      return int(text)
    except (TypeError, ValueError):
      what = ('sample has no .cls member' if text is None
              else f'.cls is not an integer: {text[:20]!r}')
      raise BadRecord('missing_file', self.name, self._key(i), what) from None

  def encoded_image(self, i: int) -> bytes:
    """Sample i's image member as stored (not decoded)."""
    shard, _, img_off, img_len = self.samples[i][:4]
    if img_off < 0:
      raise BadRecord('missing_file', self.name, self._key(i), 'sample has no image member')
    return self._read(shard, img_off, img_len)

  def __getitem__(self, i: int) -> dict:
    key = self._key(i)
    record = {'key': key}
    if self.label_texts[i] is not None:  # a classification sample needs no caption
      record['label'] = self.label(i)
    if self.samples[i][4] >= 0 or 'label' not in record:
      captions = self.text(i)
      record.update(caption=captions[0], captions=captions)
    record['image'] = decode_image(self.encoded_image(i), self.name, key, self.max_pixels)
    return record

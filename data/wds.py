"""`wds:PATTERN` — local webdataset tar shards read by offset, never extracted.

A sample is the tar members sharing a key (the member path up to the first dot of its base name):
an image (.jpg .jpeg .png .webp) and a caption (.txt, or .json with a "caption" field); a .txt of
several lines is several captions (evaluation uses all, training the first). Each shard is indexed once (member offsets), cached as JSON in `cache_dir`, and rebuilt when the shard's size
or modification time changes. A truncated shard keeps the complete samples before the cut.
"""

import glob
import json
import os
import re
import tarfile
import zlib

from data.records import DEFAULT_MAX_PIXELS, BadRecord, decode_caption, decode_image
from data.errors import ConfigError

IMAGE_EXTS = ('jpg', 'jpeg', 'png', 'webp')
CAPTION_EXTS = ('txt', 'json')
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
    return sorted(glob.glob(pattern))
  return [pattern]


def _split_name(name: str) -> tuple[str, str]:
  folder, base = os.path.split(name)
  stem, _, ext = base.partition('.')
  return os.path.join(folder, stem), ext.lower()


def index_shard(path: str) -> dict:
  """{'samples': [[key, img_off, img_len, cap_off, cap_len, cap_ext], ...], 'truncated': bool}."""
  members, truncated = {}, False
  size = os.path.getsize(path)
  try:
    with tarfile.open(path, 'r:') as tar:
      for info in tar:
        if not info.isfile():
          continue
        if info.offset_data + info.size > size:
          truncated = True
          break
        key, ext = _split_name(info.name)
        members.setdefault(key, {})[ext] = (info.offset_data, info.size)
  except (tarfile.ReadError, EOFError, OSError):
    truncated = True
  samples = []
  for key, parts in members.items():
    image = next((parts[e] for e in IMAGE_EXTS if e in parts), None)
    caption_ext = next((e for e in CAPTION_EXTS if e in parts), None)
    if image is None and caption_ext is None:
      continue  # Not a sample (e.g. a lone metadata file).
    cap = parts[caption_ext] if caption_ext else (-1, 0)
    samples.append([key, *(image or (-1, 0)), *cap, caption_ext or ''])
  return {'samples': samples, 'truncated': truncated}


def cached_index(path: str, cache_dir: str | None) -> dict:
  """The shard's index, from the cache when the shard is unchanged."""
  stat = os.stat(path)
  stamp = [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]
  cache = None
  if cache_dir:
    cache = os.path.join(cache_dir, f'wds_{zlib.crc32(stamp[0].encode()):08x}.json')
    try:
      with open(cache) as f:
        cached = json.load(f)
      if cached['stamp'] == stamp:
        return cached
    except (OSError, ValueError, KeyError):
      pass
  index = {'stamp': stamp, **index_shard(path)}
  if cache:
    os.makedirs(cache_dir, exist_ok=True)
    with open(cache + '.tmp', 'w') as f:
      json.dump(index, f)
    os.replace(cache + '.tmp', cache)
  return index


class WdsSource:
  """Random access over the samples of a set of shards."""

  def __init__(self, pattern: str, cache_dir: str | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS):
    self.paths = expand_pattern(pattern)
    missing = [p for p in self.paths if not os.path.isfile(p)]
    if not self.paths or missing:
      raise ConfigError(f'wds data path {missing[0] if missing else pattern} does not exist')
    self.name = os.path.basename(pattern.split('{')[0].rstrip('-_/')) or 'wds'
    self.max_pixels = max_pixels
    self.samples, self.problems = [], []
    for shard, path in enumerate(self.paths):
      index = cached_index(path, cache_dir)
      self.samples.extend((shard, *s) for s in index['samples'])
      if index['truncated']:
        self.problems.append(BadRecord('truncated_shard', self.name, os.path.basename(path),
                                       'tar shard is truncated; its complete samples are kept'))

  def __len__(self) -> int:
    return len(self.samples)

  def _read(self, shard: int, offset: int, length: int) -> bytes:
    with open(self.paths[shard], 'rb') as f:
      f.seek(offset)
      return f.read(length)

  def _key(self, i: int) -> str:
    shard, key = self.samples[i][:2]
    return f'{os.path.basename(self.paths[shard])}/{key}'

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

  def __getitem__(self, i: int) -> dict:
    shard, _, img_off, img_len = self.samples[i][:4]
    key = self._key(i)
    captions = self.text(i)
    if img_off < 0:
      raise BadRecord('missing_file', self.name, key, 'sample has no image member')
    image = decode_image(self._read(shard, img_off, img_len), self.name, key, self.max_pixels)
    return {'image': image, 'caption': captions[0], 'captions': captions, 'key': key}

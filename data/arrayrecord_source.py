"""`arrayrecord:PATH` — ArrayRecord files (grain's random-access format) of image-text pairs.

PATH is a folder written by `python -m data.convert` (its `*.array_record` files, in name order), or
a pattern of files (brace ranges and globs, as wds:). Local paths and `gs://` are read; array_record
opens `gs://` itself (its own GCS client: Application Default Credentials; an emulator through
CLOUD_STORAGE_EMULATOR_ENDPOINT). It cannot open `s3://`, which is refused in one line.

Each record is one byte string, no pickle:
  b'CLR1' | header length (uint32, little-endian) | header (UTF-8 JSON) | encoded image bytes
The header holds `key` and whichever of `caption`, `captions`, `label` the original record had; the
image bytes are the original file's (or a lossless PNG where the source held decoded pixels; the
folder's arrayrecord.json says which). Readers are opened per shard on first use with readahead off
(random access), so a process holds one handle per shard it reads, and the index in memory is one
record count per shard.
"""

import bisect
import json
import re
import struct
import threading

from data import storage
from data.errors import ConfigError
from data.records import DEFAULT_MAX_PIXELS, BadRecord, decode_caption, decode_image

MAGIC = b'CLR1'
SUFFIX = '.array_record'
METADATA = 'arrayrecord.json'
# Random access: no readahead, no background threads; grain's threads read records in parallel.
READER_OPTIONS = 'readahead_buffer_size:0,max_parallelism:0'
WRITER_OPTIONS = 'group_size:1'  # one record per chunk: what grain needs for fast random reads
_HEAD = struct.Struct('<4sI')
_BRACES = re.compile(r'\{(\d+)\.\.(\d+)\}')  # as wds: patterns, e.g. {000..099}


def encode_record(header: dict, image: bytes) -> bytes:
  """One record's bytes: magic, header length, JSON header, image bytes."""
  text = json.dumps(header, ensure_ascii=False, separators=(',', ':')).encode('utf-8')
  return _HEAD.pack(MAGIC, len(text)) + text + image


def decode_record(data: bytes, source: str, key: str) -> tuple[dict, bytes]:
  """(header, image bytes) of a record; BadRecord(bad_json_line) when it is not one."""
  if len(data) < _HEAD.size or data[:4] != MAGIC:
    raise BadRecord('bad_json_line', source, key, 'not an image-text record (bad magic)')
  (_, length), start = _HEAD.unpack_from(data), _HEAD.size
  try:
    header = json.loads(data[start:start + length].decode('utf-8'))
  except (UnicodeDecodeError, ValueError):
    raise BadRecord('bad_json_line', source, key, 'record header is not UTF-8 JSON') from None
  if start + length > len(data) or not isinstance(header, dict):
    raise BadRecord('bad_json_line', source, key, 'record header is cut short or not an object')
  return header, data[start + length:]


def shard_paths(path: str) -> list[str]:
  """The ArrayRecord files a spec names: a folder's *.array_record, or a pattern of files."""
  if storage.is_dir(path):
    return [storage.join(path, n) for n in storage.listdir(path) if n.endswith(SUFFIX)]
  from data.wds import expand_pattern  # The same patterns as wds: shards.
  if not storage.is_bucket(path):
    return expand_pattern(path)
  match = _BRACES.search(path)
  if match:
    lo, hi = match.group(1), match.group(2)
    return [p for n in range(int(lo), int(hi) + 1)
            for p in shard_paths(path[:match.start()] + str(n).zfill(len(lo)) + path[match.end():])]
  if any(c in path for c in '*?['):
    fs, inner = storage.filesystem(path)
    return sorted(f'{storage.scheme(path)}://{p}' for p in fs.glob(inner))
  return [path]


def _open_reader(path: str):
  from array_record.python.array_record_module import ArrayRecordReader
  return ArrayRecordReader(path, READER_OPTIONS)


class ArrayRecordSource:
  """Random access over the records of a set of ArrayRecord files."""

  def __init__(self, path: str, max_pixels: int = DEFAULT_MAX_PIXELS):
    if storage.scheme(path) == 's3':
      raise ConfigError(f'arrayrecord:{path}: array_record 0.8.6 opens local and gs:// files only; '
                        'copy the files to local disk (or use wds: shards, read through s3fs)')
    storage.check_reachable(path, 'arrayrecord data')
    self.paths = shard_paths(path)
    missing = [p for p in self.paths if not storage.is_file(p)]
    if not self.paths or missing:
      raise ConfigError(f'arrayrecord data path {missing[0] if missing else path} does not exist '
                        f'(a folder of *{SUFFIX} files, or a pattern of them)')
    self.max_pixels, self.problems = max_pixels, []
    meta = self._metadata(path)
    self.name = meta.get('name') or storage.basename(path.split('{')[0]) or 'arrayrecord'
    if meta.get('classnames'):
      self.classnames = list(meta['classnames'])
    counts = meta.get('counts', {})
    self._counts = [self._count(p, counts) for p in self.paths]
    self._ends = [sum(self._counts[:k + 1]) for k in range(len(self._counts))]
    self._readers, self._lock = [None] * len(self.paths), threading.Lock()

  def _metadata(self, path: str) -> dict:
    folder = path if storage.is_dir(path) else storage.parent(self.paths[0])
    meta_path = storage.join(folder, METADATA)
    return json.loads(storage.read_text(meta_path)) if storage.is_file(meta_path) else {}

  def _count(self, path: str, counts: dict) -> int:
    """Records in a shard: from arrayrecord.json when it lists the file, else its footer."""
    if storage.basename(path) in counts:
      return int(counts[storage.basename(path)])
    reader = _open_reader(path)
    if not reader.ok():
      self.problems.append(BadRecord('truncated_shard', self.name, storage.basename(path),
                                     'not a readable ArrayRecord file (truncated?); skipped'))
      return 0
    count = reader.num_records()
    reader.close()
    return count

  def __getstate__(self) -> dict:
    state = dict(self.__dict__)  # grain ships sources to worker processes: each opens its own
    state.pop('_readers'), state.pop('_lock')
    return state

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)
    self._readers, self._lock = [None] * len(self.paths), threading.Lock()

  def __len__(self) -> int:
    return self._ends[-1] if self._ends else 0

  def _locate(self, i: int) -> tuple[int, int]:
    if not 0 <= i < len(self):
      raise IndexError(i)
    shard = bisect.bisect_right(self._ends, i)
    return shard, i - (self._ends[shard - 1] if shard else 0)

  def _reader(self, shard: int):
    if self._readers[shard] is None:
      with self._lock:
        if self._readers[shard] is None:
          reader = _open_reader(self.paths[shard])
          if not reader.ok():  # A file cut short since arrayrecord.json counted it.
            raise BadRecord('truncated_shard', self.name, storage.basename(self.paths[shard]),
                            'not a readable ArrayRecord file (truncated?)')
          self._readers[shard] = reader
    return self._readers[shard]

  def _record(self, i: int) -> tuple[dict, bytes, str]:
    shard, row = self._locate(int(i))
    where = f'{storage.basename(self.paths[shard])}#{row}'
    try:
      data = self._reader(shard).read([row])[0]
    except RuntimeError as e:  # riegeli's checksums: a damaged chunk
      raise BadRecord('truncated_shard', self.name, where,
                      f'damaged ArrayRecord chunk: {str(e).splitlines()[0]}') from None
    header, image = decode_record(data, self.name, where)
    return header, image, str(header.get('key', where))

  def text(self, i: int) -> list[str]:
    """The caption(s) of record i (its image bytes are read but not decoded)."""
    header, _, key = self._record(i)
    values = header['captions'] if 'captions' in header else [header.get('caption')]
    return [decode_caption(v, self.name, key) for v in values]

  def encoded_image(self, i: int) -> bytes:
    """Record i's image bytes as stored."""
    return self._record(i)[1]

  def __getitem__(self, i: int) -> dict:
    header, image, key = self._record(i)
    record = {k: header[k] for k in ('caption', 'captions', 'label') if k in header}
    if not ('caption' in record or 'captions' in record):
      raise BadRecord('missing_caption', self.name, key, 'record has no caption')
    record['image'] = decode_image(image, self.name, key, self.max_pixels)
    record['key'] = key
    return record

"""Sources over files on disk or in a bucket: `csv:`, `jsonl:` and `imagefolder:`.

Relative image paths resolve against the folder of the CSV/JSONL file (into the same bucket when
the file is in one); absolute paths and gs:// / s3:// URLs stay. Records decode on access
(`source[i]`) and raise `BadRecord` for anything broken.
"""

import csv
import io
import json
import re

from data import storage
from data.records import DEFAULT_MAX_PIXELS, BadRecord, decode_caption, decode_image, read_file
from data.errors import ConfigError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.webp', '.bmp', '.gif', '.tif', '.tiff')


# scheme://... : gs:// and s3:// objects are read like files; other URLs (http, https, ...) are
# not fetched: a run reads storage, it does not crawl the web.
URL = re.compile(r'^[A-Za-z][A-Za-z0-9+.-]*://')
JSONL_URL = re.compile(r'"image"\s*:\s*"[A-Za-z][A-Za-z0-9+.-]*://')


def refuse_url(path: str, source: str, where: str) -> None:
  """A URL other than gs:// or s3:// where an image path belongs is a ConfigError naming it."""
  if URL.match(path) and not storage.is_bucket(path):
    raise ConfigError(f'{source} {where}: image {path!r} is a {storage.scheme(path)}:// URL; '
                      'csv:/jsonl: sources read local files and gs:// or s3:// objects only '
                      '(paths relative to the file\'s folder, absolute, or bucket URLs): download '
                      'the images first, or pack them as wds: shards')


def _require_file(path: str, kind: str) -> None:
  storage.check_reachable(path, f'{kind} data path')
  if not storage.is_file(path):
    raise ConfigError(f'{kind} data path {path} does not exist')


def _read_text(path: str) -> str:
  # surrogateescape keeps undecodable bytes visible, so a bad caption is caught per row.
  return storage.read_text(path, errors='surrogateescape')


class CsvSource:
  """A CSV/TSV with a header row; columns `image_key` and `caption_key` (OpenCLIP: filepath/title)."""

  def __init__(self, path: str, sep: str = ',', image_key: str = 'image',
               caption_key: str = 'caption', max_pixels: int = DEFAULT_MAX_PIXELS):
    _require_file(path, 'csv')
    self.name, self.base = storage.basename(path), storage.parent(path)
    self.max_pixels = max_pixels
    sep = '\t' if sep in ('tab', '\\t') else sep
    rows = list(csv.reader(io.StringIO(_read_text(path), newline=''), delimiter=sep))
    if not rows:
      raise ConfigError(f'csv {path} is empty: it needs a header row')
    self.header, self.rows = rows[0], rows[1:]
    for column in (image_key, caption_key):
      if column not in self.header:
        raise ConfigError(f'csv {path} has no column {column!r} (columns: {self.header}); '
                          'set image_key=/caption_key= in the spec, e.g. csv:F?sep=tab&image_key=filepath&caption_key=title')
    self._image, self._caption = self.header.index(image_key), self.header.index(caption_key)
    for i, row in enumerate(self.rows):
      if len(row) > self._image:
        refuse_url(row[self._image], f'csv {path}', f'row {i + 2}')

  def __len__(self) -> int:
    return len(self.rows)

  def _row(self, i: int) -> list[str]:
    row = self.rows[i]
    if len(row) != len(self.header):
      raise BadRecord('bad_csv_row', self.name, f'row {i + 2}',
                      f'{len(row)} fields where the header has {len(self.header)}')
    return row

  def text(self, i: int) -> list[str]:
    """The captions of record i, without reading its image."""
    return [decode_caption(self._row(i)[self._caption], self.name, f'row {i + 2}')]

  def encoded_image(self, i: int) -> bytes:
    """Record i's image file as stored (not decoded)."""
    return read_file(storage.resolve(self.base, self._row(i)[self._image]), self.name,
                     f'row {i + 2}')

  def __getitem__(self, i: int) -> dict:
    row, key = self._row(i), f'row {i + 2}'
    caption = decode_caption(row[self._caption], self.name, key)
    data = self.encoded_image(i)
    return {'image': decode_image(data, self.name, key, self.max_pixels), 'caption': caption,
            'key': key}


class JsonlSource:
  """One JSON object per line: {"image": path, "caption": str} or {..., "captions": [str, ...]}."""

  def __init__(self, path: str, max_pixels: int = DEFAULT_MAX_PIXELS):
    _require_file(path, 'jsonl')
    self.name, self.base = storage.basename(path), storage.parent(path)
    self.max_pixels = max_pixels
    # Lines as a text file yields them (universal newlines; a U+2028 inside a string is no break).
    self.lines = [line for line in io.StringIO(_read_text(path), newline=None) if line.strip()]
    for i, line in enumerate(self.lines):
      if JSONL_URL.search(line):  # Only such lines are parsed now; the rest when read.
        refuse_url(self._object(i).get('image', ''), f'jsonl {path}', f'line {i + 1}')

  def __len__(self) -> int:
    return len(self.lines)

  def _object(self, i: int) -> dict:
    try:
      obj = json.loads(self.lines[i])
    except json.JSONDecodeError as e:
      raise BadRecord('bad_json_line', self.name, f'line {i + 1}', f'not JSON: {e.msg}') from None
    if not isinstance(obj, dict):
      raise BadRecord('bad_json_line', self.name, f'line {i + 1}', 'not a JSON object')
    return obj

  def text(self, i: int) -> list[str]:
    """The captions of record i, without reading its image."""
    obj, key = self._object(i), f'line {i + 1}'
    values = obj['captions'] if isinstance(obj.get('captions'), list) else [obj.get('caption')]
    return [decode_caption(v, self.name, key) for v in values] or [
        decode_caption(None, self.name, key)]

  def encoded_image(self, i: int) -> bytes:
    """Record i's image file as stored (not decoded)."""
    obj, key = self._object(i), f'line {i + 1}'
    if not isinstance(obj.get('image'), str):
      raise BadRecord('missing_file', self.name, key, 'no "image" path')
    return read_file(storage.resolve(self.base, obj['image']), self.name, key)

  def __getitem__(self, i: int) -> dict:
    obj, key = self._object(i), f'line {i + 1}'
    captions = self.text(i)
    data = self.encoded_image(i)
    record = {'image': decode_image(data, self.name, key, self.max_pixels),
              'caption': captions[0], 'key': key}
    if 'captions' in obj:
      record['captions'] = captions
    return record


class ImageFolderSource:
  """DIR/<class>/<image>: labels from sorted folder names; names from classnames.txt if present.

  `label_names` keeps the folder names (label i is the i-th in sorted order) beside `classnames`,
  so names given later can be matched to labels by name.
  """

  def __init__(self, root: str, max_pixels: int = DEFAULT_MAX_PIXELS):
    storage.check_reachable(root, 'imagefolder data path')
    if not storage.is_dir(root):
      raise ConfigError(f'imagefolder data path {root} does not exist')
    self.name = storage.basename(root)
    self.root, self.max_pixels = root, max_pixels
    folders = [d for d in storage.listdir(root) if storage.is_dir(storage.join(root, d))]
    if not folders:
      raise ConfigError(f'imagefolder {root} has no class folders')
    self.label_names = folders
    self.classnames = [d.replace('_', ' ') for d in folders]
    names_file = storage.join(root, 'classnames.txt')
    if storage.is_file(names_file):
      names = [line.strip() for line in storage.read_text(names_file).splitlines() if line.strip()]
      if len(names) != len(folders):
        raise ConfigError(f'{names_file} has {len(names)} names for {len(folders)} folders')
      self.classnames = names
    # Keys are `folder/name` with '/' on every platform and storage alike.
    self.items = [(f'{folder}/{name}', label)
                  for label, folder in enumerate(folders)
                  for name in storage.listdir(storage.join(root, folder))
                  if name.lower().endswith(IMAGE_EXTENSIONS)]

  def __len__(self) -> int:
    return len(self.items)

  def labels(self) -> list[int]:
    """Every record's label, without reading images."""
    return [label for _, label in self.items]

  def text(self, i: int) -> list[str]:
    """The class name of record i, used as its caption."""
    return [self.classnames[self.items[i][1]]]

  def encoded_image(self, i: int) -> bytes:
    """Record i's image file as stored (not decoded)."""
    path = self.items[i][0]
    return read_file(storage.join(self.root, *path.split('/')), self.name, path)

  def __getitem__(self, i: int) -> dict:
    path, label = self.items[i]
    data = self.encoded_image(i)
    return {'image': decode_image(data, self.name, path, self.max_pixels), 'label': label,
            'caption': self.classnames[label], 'key': path}

"""Turning raw record fields into pixels and text, and the policy for records that are broken.

Every failure is a `BadRecord` with a kind from `BAD_KINDS`, the source and the record's key, so
that `data.on_bad_record='skip'` can count it and `'error'` can stop with one line naming it.
"""

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from data import storage
from data.errors import require

BAD_KINDS = ('truncated_image', 'empty_file', 'not_an_image', 'missing_file', 'missing_caption',
             'bad_utf8', 'too_many_pixels', 'truncated_shard', 'bad_csv_row', 'bad_json_line')
BAD_POLICIES = ('skip', 'error')
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold.


def check_bad_policy(policy: str) -> None:
  """`data.on_bad_record` is one of BAD_POLICIES (ConfigError otherwise)."""
  require(policy in BAD_POLICIES,
          f'unknown data.on_bad_record {policy!r}; known: {", ".join(BAD_POLICIES)}')


class BadRecord(Exception):
  """A record that cannot be used; `str()` is the one-line message."""

  def __init__(self, kind: str, source: str, key: str, reason: str):
    assert kind in BAD_KINDS, kind
    self.kind, self.source, self.key, self.reason = kind, source, key, reason
    super().__init__(f'bad record in {source}, key {key}: {reason} ({kind})')

  def __reduce__(self):  # Rebuilt intact when grain passes it from a worker process.
    return BadRecord, (self.kind, self.source, self.key, self.reason)


class BrokenSource(Exception):
  """Every record tried in a row was bad: the source, not a few records, is broken."""


def read_file(path: str, source: str, key: str) -> bytes:
  """The bytes of a file (local or a bucket object), or BadRecord(missing_file)."""
  try:
    return storage.read_bytes(path)
  except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
    raise BadRecord('missing_file', source, key, f'image file {path} does not exist') from None


def to_rgb(image: Image.Image | np.ndarray) -> Image.Image:
  """A PIL image of any mode, or an array Pillow reads, -> RGB: alpha composited on white,
  16/32-bit greyscale scaled to 8 bits. Every source's pixels pass through here."""
  if isinstance(image, np.ndarray):
    image = Image.fromarray(image)
  if image.mode in ('I;16', 'I;16B', 'I;16L', 'I', 'F'):
    values = np.asarray(image, np.float64)
    top = 65535.0 if image.mode.startswith('I;16') else max(values.max(), 1.0)
    image = Image.fromarray(np.clip(values / top * 255.0, 0, 255).astype(np.uint8), 'L')
  if image.mode == 'P' and 'transparency' in image.info:
    image = image.convert('RGBA')
  if image.mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La'):
    image = image.convert('RGBA')
    background = Image.new('RGBA', image.size, (255, 255, 255, 255))
    image = Image.alpha_composite(background, image)
  return image if image.mode == 'RGB' else image.convert('RGB')


def decode_image(data: bytes, source: str, key: str, max_pixels: int) -> Image.Image:
  """Encoded bytes -> RGB PIL image; refuses oversized images before decoding their pixels."""
  if not data:
    raise BadRecord('empty_file', source, key, 'image file is empty (0 bytes)')
  try:
    image = Image.open(io.BytesIO(data))
  except UnidentifiedImageError:
    raise BadRecord('not_an_image', source, key, 'bytes are not an image Pillow can read') from None
  except Image.DecompressionBombError as e:
    raise BadRecord('too_many_pixels', source, key, str(e)) from None
  except OSError as e:  # A header cut short.
    raise BadRecord('truncated_image', source, key, f'image cannot be decoded: {e}') from None
  width, height = image.size
  if width * height > max_pixels:
    raise BadRecord('too_many_pixels', source, key,
                    f'{width}x{height} pixels is over the limit of {max_pixels}')
  try:
    image.load()
  except (OSError, SyntaxError, ValueError) as e:
    raise BadRecord('truncated_image', source, key, f'image cannot be decoded: {e}') from None
  return to_rgb(image)


def decode_caption(value, source: str, key: str) -> str:
  """bytes or str -> a non-empty caption, or BadRecord(bad_utf8 / missing_caption)."""
  if isinstance(value, bytes):
    try:
      value = value.decode('utf-8')
    except UnicodeDecodeError:
      raise BadRecord('bad_utf8', source, key, 'caption bytes are not UTF-8') from None
  if isinstance(value, str) and any('\udc80' <= c <= '\udcff' for c in value):
    raise BadRecord('bad_utf8', source, key, 'caption bytes are not UTF-8')
  if not isinstance(value, str) or not value.strip():
    raise BadRecord('missing_caption', source, key, 'caption is missing or empty')
  return value.strip()

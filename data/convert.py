"""Converts any data source to ArrayRecord files, grain's native random-access format.

  python -m data.convert SPEC --to arrayrecord --out DIR [--shards N] [--count N]
      [--image_size 64] [--seed 0] [--max_pixels N]
Writes DIR/<name>-0000k-of-0000N.array_record and DIR/arrayrecord.json (record counts, class names),
then prints what it wrote and the spec that reads it (`arrayrecord:DIR`). Images keep their original
encoded bytes (a file's, a tar member's, an encoded TFDS feature's); sources that hold decoded
pixels (shapes:, most tfds:) are stored as lossless PNG, and arrayrecord.json says which. Bad
records are skipped and counted by kind. DIR may be gs:// or s3://: files are written locally, then
uploaded (array_record writes local files only).
"""

import argparse
import io
import json
import os
import sys
import tempfile

import numpy as np
from PIL import Image

from data import storage
from data.arrayrecord_source import METADATA, SUFFIX, WRITER_OPTIONS, encode_record
from data.errors import ConfigError
from data.records import DEFAULT_MAX_PIXELS, BadRecord
from data.sources import mixture_parts, open_source

FORMATS = ('arrayrecord',)


def png_bytes(image) -> bytes:
  """A decoded image (array or PIL) -> lossless PNG bytes."""
  image = Image.fromarray(np.asarray(image)) if not isinstance(image, Image.Image) else image
  buffer = io.BytesIO()
  image.save(buffer, format='PNG')
  return buffer.getvalue()


def encoded_image(source, i: int) -> bytes | None:
  """Record i's original encoded image bytes, or None where the source holds only pixels
  (shapes:, tfds: image features stored decoded)."""
  read = getattr(source, 'encoded_image', None)
  return read(i) if read is not None else None


def header_of(record: dict) -> dict:
  """The fields a record keeps beside its image: key, caption(s), label."""
  return {k: record[k] for k in ('key', 'caption', 'captions', 'label') if k in record}


class Converter:
  """Writes records into `shards` ArrayRecord files under a local folder, in source order."""

  def __init__(self, source, shards: int, count: int):
    self.source, self.shards, self.count = source, shards, count
    self.width = max(5, len(str(shards)))
    self.written = [0] * shards
    self.skipped: dict[str, int] = {}
    self.png = 0

  def name(self, shard: int) -> str:
    """The file name of shard k (TFDS/grain style: NAME-0000k-of-0000N)."""
    return f'{self.source.name}-{shard:0{self.width}d}-of-{self.shards:0{self.width}d}{SUFFIX}'

  def record(self, i: int) -> bytes | None:
    """Record i's bytes, or None (counted) when the source record is bad."""
    try:
      record = self.source[i]
      image = encoded_image(self.source, i)
    except BadRecord as e:
      self.skipped[e.kind] = self.skipped.get(e.kind, 0) + 1
      print(f'warning: skipping {e}', file=sys.stderr, flush=True)
      return None
    if image is None:
      image, self.png = png_bytes(record['image']), self.png + 1
    return encode_record(header_of(record), image)

  def write(self, folder: str) -> None:
    """Shard k holds source records [k*n/N, (k+1)*n/N) that are readable."""
    from array_record.python.array_record_module import ArrayRecordWriter
    for shard in range(self.shards):
      path = os.path.join(folder, self.name(shard))
      writer = ArrayRecordWriter(path, WRITER_OPTIONS)
      if not writer.ok():
        raise ConfigError(f'cannot write ArrayRecord file {path}')
      for i in range(shard * self.count // self.shards, (shard + 1) * self.count // self.shards):
        data = self.record(i)
        if data is not None:
          writer.write(data)
          self.written[shard] += 1
      writer.close()

  def images(self) -> str:
    """How the images were stored: 'original' bytes, 'png' (from pixels), or 'mixed'."""
    if not self.png:
      return 'original'
    return 'png' if self.png == sum(self.written) else 'mixed (original where the source had bytes)'

  def metadata(self, spec: str) -> dict:
    """arrayrecord.json: what was converted, the record count per file, class names."""
    meta = {'name': self.source.name, 'from': spec, 'records': sum(self.written),
            'counts': {self.name(k): n for k, n in enumerate(self.written)},
            'skipped': self.skipped, 'images': self.images()}
    if getattr(self.source, 'classnames', None):
      meta['classnames'] = list(self.source.classnames)
    return meta


def _publish(folder: str, out: str) -> None:
  """Copies the written files to `out` (a bucket) or moves them into it (local)."""
  storage.makedirs(out)
  for name in sorted(os.listdir(folder)):
    local = os.path.join(folder, name)
    if storage.is_bucket(out):
      fs, inner = storage.filesystem(storage.join(out, name))
      fs.put_file(local, inner)
    else:
      os.replace(local, os.path.join(out, name))


def convert(spec: str, out: str, shards: int = 1, count: int | None = None, image_size: int = 64,
            seed: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Converter, str]:
  """Converts the source `spec` names into ArrayRecord files in `out`; returns (converter, spec)."""
  if len(mixture_parts(spec)) > 1:
    raise ConfigError(f'{spec!r} is a mixture: convert each part, then mix the arrayrecord: specs')
  if shards < 1:
    raise ConfigError(f'--shards {shards}: need at least 1')
  storage.check_reachable(out, 'convert --out')
  if storage.is_dir(out) and any(n.endswith(SUFFIX) for n in storage.listdir(out)):
    raise ConfigError(f'--out {out} already holds {SUFFIX} files; choose an empty folder')
  source = open_source(spec, image_size=image_size, seed=seed, max_pixels=max_pixels)
  count = len(source) if count is None else min(count, len(source))
  converter = Converter(source, min(shards, max(count, 1)), count)
  if not storage.is_bucket(out):
    storage.makedirs(out)
  # Written in a hidden folder inside the output (moved into place when complete) or, for a
  # bucket, in a local temporary folder that is then uploaded.
  with tempfile.TemporaryDirectory(prefix='.converting-',
                                   dir=None if storage.is_bucket(out) else out) as folder:
    converter.write(folder)
    with open(os.path.join(folder, METADATA), 'w') as f:
      json.dump(converter.metadata(spec), f, indent=1)
    _publish(folder, out)
  return converter, f'arrayrecord:{out}'


def main(argv: list[str]) -> int:
  """Command-line entry point."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('spec', help='the source to convert (see data/sources.py)')
  parser.add_argument('--to', required=True, choices=FORMATS)
  parser.add_argument('--out', required=True, help='output folder (local, gs:// or s3://)')
  parser.add_argument('--shards', type=int, default=1)
  parser.add_argument('--count', type=int, default=None, help='convert only the first N records')
  parser.add_argument('--image_size', type=int, default=64, help='shapes: render size')
  parser.add_argument('--seed', type=int, default=0, help='shapes: corpus seed')
  parser.add_argument('--max_pixels', type=int, default=DEFAULT_MAX_PIXELS,
                      help='larger images are bad records (skipped), as in training')
  args = parser.parse_args(argv)
  try:
    converter, out_spec = convert(args.spec, args.out, args.shards, args.count, args.image_size,
                                  args.seed, args.max_pixels)
  except ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  skipped = ', '.join(f'{k} {n}' for k, n in sorted(converter.skipped.items())) or 'none'
  print(f'wrote {sum(converter.written)} records of {args.spec} in {converter.shards} ArrayRecord '
        f'file(s) to {args.out} (images: {converter.images()}; bad records skipped: {skipped})')
  print(out_spec)
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))

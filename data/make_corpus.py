"""Writes the embedded shapes corpus in the formats users bring, for trying every source kind.

  python -m data.make_corpus --format csv|jsonl|wds|imagefolder --out DIR [--count N]
      [--split train] [--image_size 64] [--per_shard 1000] [--jpeg_quality 90]
Prints the data spec to train or evaluate on what it wrote. DIR may be a gs:// or s3:// URL.
"""

import argparse
import csv
import io
import json
import sys
import tarfile

from PIL import Image

from data import storage
from data.shapes import ShapesSource


def encode(array, fmt: str = 'JPEG', quality: int = 90) -> bytes:
  """uint8 [H, W, 3] -> encoded image bytes."""
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format=fmt, quality=quality)
  return buffer.getvalue()


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  """Appends one in-memory file to a tar."""
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def write_corpus(fmt: str, out: str, count: int, split: str = 'train', image_size: int = 64,
                 per_shard: int = 1000, quality: int = 90) -> str:
  """Writes `count` records of a shapes split (locally or to a bucket); returns the data spec."""
  if fmt not in ('csv', 'jsonl', 'wds', 'imagefolder'):
    raise ValueError(f'unknown format {fmt!r}')
  source = ShapesSource(split, image_size=image_size)
  storage.check_reachable(out, 'corpus folder')
  storage.makedirs(out)
  records = (source[i] for i in range(count))
  if fmt == 'wds':
    shards = -(-count // per_shard)
    width = max(6, len(str(shards - 1)))
    for shard in range(shards):
      buffer = io.BytesIO()  # a whole shard, then one upload: objects cannot be appended to
      with tarfile.open(fileobj=buffer, mode='w') as tar:
        for i in range(shard * per_shard, min(count, (shard + 1) * per_shard)):
          record = next(records)
          add_member(tar, f'{i:09d}.jpg', encode(record['image'], quality=quality))
          text = '\n'.join(record.get('captions') or [record['caption']])
          add_member(tar, f'{i:09d}.txt', text.encode())
      storage.write_bytes(storage.join(out, f'shard-{shard:0{width}d}.tar'), buffer.getvalue())
    return f'wds:{out}/shard-{{{0:0{width}d}..{shards - 1:0{width}d}}}.tar'
  if fmt == 'imagefolder':
    for i, record in enumerate(records):
      folder = source.classnames[record['label']].replace(' ', '_')
      storage.write_bytes(storage.join(out, folder, f'{i:06d}.jpg'),
                          encode(record['image'], quality=quality))
    return f'imagefolder:{out}'
  rows = []
  for i, record in enumerate(records):
    name = f'images/{i:06d}.jpg'
    storage.write_bytes(storage.join(out, 'images', f'{i:06d}.jpg'),
                        encode(record['image'], quality=quality))
    rows.append((name, record))
  if fmt == 'csv':
    text = io.StringIO(newline='')
    writer = csv.writer(text)
    writer.writerow(['image', 'caption'])
    writer.writerows((name, r.get('caption') or r['captions'][0]) for name, r in rows)
    storage.write_text(storage.join(out, 'captions.csv'), text.getvalue())
    return f'csv:{out}/captions.csv'
  lines = [json.dumps({'image': name, **({'captions': r['captions']} if 'captions' in r
                                           else {'caption': r['caption']})}) + '\n'
           for name, r in rows]
  storage.write_text(storage.join(out, 'captions.jsonl'), ''.join(lines))
  return f'jsonl:{out}/captions.jsonl'


def main(argv: list[str]) -> int:
  """Command-line entry point."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--format', required=True, choices=['csv', 'jsonl', 'wds', 'imagefolder'])
  parser.add_argument('--out', required=True)
  parser.add_argument('--count', type=int, default=10_000)
  parser.add_argument('--split', default='train', choices=['train', 'zeroshot', 'retrieval'])
  parser.add_argument('--image_size', type=int, default=64)
  parser.add_argument('--per_shard', type=int, default=1000)
  parser.add_argument('--jpeg_quality', type=int, default=90)
  args = parser.parse_args(argv)
  spec = write_corpus(args.format, args.out, args.count, args.split, args.image_size,
                      args.per_shard, args.jpeg_quality)
  print(spec)
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))

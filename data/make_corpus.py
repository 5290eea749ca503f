"""Writes the embedded shapes corpus in the formats users bring, for trying every source kind.

  python -m data.make_corpus --format csv|jsonl|wds|imagefolder --out DIR [--count N]
      [--split train] [--image_size 64] [--per_shard 1000] [--jpeg_quality 90]
Prints the data spec to train or evaluate on what it wrote.
"""

import argparse
import io
import json
import os
import sys
import tarfile

from PIL import Image

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
  """Writes `count` records of a shapes split; returns the data spec that reads them."""
  source = ShapesSource(split, image_size=image_size)
  os.makedirs(out, exist_ok=True)
  records = (source[i] for i in range(count))
  if fmt == 'wds':
    shards = -(-count // per_shard)
    width = max(6, len(str(shards - 1)))
    for shard in range(shards):
      with tarfile.open(os.path.join(out, f'shard-{shard:0{width}d}.tar'), 'w') as tar:
        for i in range(shard * per_shard, min(count, (shard + 1) * per_shard)):
          record = next(records)
          add_member(tar, f'{i:09d}.jpg', encode(record['image'], quality=quality))
          text = '\n'.join(record.get('captions') or [record['caption']])
          add_member(tar, f'{i:09d}.txt', text.encode())
    return f'wds:{out}/shard-{{{0:0{width}d}..{shards - 1:0{width}d}}}.tar'
  if fmt == 'imagefolder':
    for i, record in enumerate(records):
      folder = os.path.join(out, source.classnames[record['label']].replace(' ', '_'))
      os.makedirs(folder, exist_ok=True)
      with open(os.path.join(folder, f'{i:06d}.jpg'), 'wb') as f:
        f.write(encode(record['image'], quality=quality))
    return f'imagefolder:{out}'
  os.makedirs(os.path.join(out, 'images'), exist_ok=True)
  rows = []
  for i, record in enumerate(records):
    name = f'images/{i:06d}.jpg'
    with open(os.path.join(out, name), 'wb') as f:
      f.write(encode(record['image'], quality=quality))
    rows.append((name, record))
  if fmt == 'csv':
    import csv
    with open(os.path.join(out, 'captions.csv'), 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow(['image', 'caption'])
      writer.writerows((name, r.get('caption') or r['captions'][0]) for name, r in rows)
    return f'csv:{out}/captions.csv'
  if fmt == 'jsonl':
    with open(os.path.join(out, 'captions.jsonl'), 'w') as f:
      for name, r in rows:
        obj = {'image': name, **({'captions': r['captions']} if 'captions' in r
                                 else {'caption': r['caption']})}
        f.write(json.dumps(obj) + '\n')
    return f'jsonl:{out}/captions.jsonl'
  raise ValueError(f'unknown format {fmt!r}')


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

"""Small corpora in every source format, with known bad records, built inside tests."""

import csv
import os
import tarfile

import numpy as np

from data.make_corpus import add_member, encode, write_corpus


def good_image(seed: int = 0, size: int = 24) -> bytes:
  rng = np.random.default_rng(seed)
  return encode(rng.integers(0, 256, (size, size, 3), np.uint8))


def bad_payloads(max_pixels: int) -> dict[str, tuple[bytes | None, bytes]]:
  """kind -> (image bytes or None for a missing file, caption bytes): one record per kind."""
  bomb_side = int(max_pixels ** 0.5) + 8
  bomb = encode(np.zeros((bomb_side, bomb_side, 3), np.uint8))
  return {
      'truncated_image': (good_image(1)[:60], b'a truncated image'),
      'empty_file': (b'', b'an empty file'),
      'not_an_image': (b'this is plain text, not a picture', b'not an image'),
      'missing_file': (None, b'a missing file'),
      'missing_caption': (good_image(2), b'   '),
      'bad_utf8': (good_image(3), b'caf\xe9 \xff\xfe'),
      'too_many_pixels': (bomb, b'a decompression bomb'),
  }


def csv_with_bad_records(folder: str, good: int, max_pixels: int) -> tuple[str, dict[str, int]]:
  """A CSV of `good` valid rows plus one row per bad kind (and a wrong field count)."""
  os.makedirs(os.path.join(folder, 'img'), exist_ok=True)
  lines = [b'image,caption']
  for i in range(good):
    with open(os.path.join(folder, 'img', f'g{i}.jpg'), 'wb') as f:
      f.write(good_image(100 + i))
    lines.append(f'img/g{i}.jpg,good caption {i}'.encode())
  expected = {}
  for kind, (data, caption) in bad_payloads(max_pixels).items():
    if data is not None:
      with open(os.path.join(folder, 'img', f'{kind}.jpg'), 'wb') as f:
        f.write(data)
    lines.append(f'img/{kind}.jpg,'.encode() + caption)
    expected[kind] = 1
  lines.append(b'img/g0.jpg,one,field,too,many')
  expected['bad_csv_row'] = 1
  path = os.path.join(folder, 'bad.csv')
  with open(path, 'wb') as f:
    f.write(b'\n'.join(lines) + b'\n')
  return path, expected


def wds_with_bad_records(folder: str, good: int, max_pixels: int) -> tuple[str, dict[str, int]]:
  """Two shards: one with a record per bad kind, and one truncated in the middle."""
  os.makedirs(folder, exist_ok=True)
  expected = {}
  with tarfile.open(os.path.join(folder, 'part-000.tar'), 'w') as tar:
    for i in range(good):
      add_member(tar, f'g{i:04d}.jpg', good_image(200 + i))
      add_member(tar, f'g{i:04d}.txt', f'good caption {i}'.encode())
    for kind, (data, caption) in bad_payloads(max_pixels).items():
      if data is not None:
        add_member(tar, f'{kind}.jpg', data)
      add_member(tar, f'{kind}.txt', caption)
      expected[kind] = 1
  truncated = os.path.join(folder, 'part-001.tar')
  with tarfile.open(truncated, 'w') as tar:
    for i in range(4):
      add_member(tar, f't{i:04d}.jpg', good_image(300 + i, size=64))
      add_member(tar, f't{i:04d}.txt', f'kept caption {i}'.encode())
  data = open(truncated, 'rb').read()
  with open(truncated, 'wb') as f:
    f.write(data[:len(data) * 5 // 8])
  expected['truncated_shard'] = 1
  return os.path.join(folder, 'part-{000..001}.tar'), expected


def every_format(root: str, count: int) -> dict[str, str]:
  """name -> spec of the same shapes records written in every file format."""
  specs = {fmt: write_corpus(fmt, os.path.join(root, fmt), count, 'retrieval', 32, per_shard=7)
           for fmt in ('csv', 'jsonl', 'wds', 'imagefolder')}
  tsv = os.path.join(root, 'openclip.tsv')
  with open(os.path.join(root, 'csv', 'captions.csv')) as f, open(tsv, 'w', newline='') as g:
    rows = list(csv.reader(f))
    writer = csv.writer(g, delimiter='\t')
    writer.writerow(['filepath', 'title'])
    writer.writerows([os.path.join('csv', r[0]), r[1]] for r in rows[1:])
  specs['tsv'] = f'csv:{tsv}?sep=tab&image_key=filepath&caption_key=title'
  return specs



def mixed_wds(folder: str, shards: int = 3, per_shard: int = 5) -> tuple[str, list[str]]:
  """Shards whose samples mix what webdataset allows: .jpg+.txt, .png+.json, an image alone, a
  caption alone, a lone metadata member, keys in folders, and names longer than 100 characters
  (tar's prefix field). Every caption is unique. -> (wds spec, [shard paths])."""
  os.makedirs(folder, exist_ok=True)
  paths = []
  for s in range(shards):
    path = os.path.join(folder, f'mixed-{s:03d}.tar')
    with tarfile.open(path, 'w', format=tarfile.USTAR_FORMAT) as tar:
      for i in range(per_shard):
        n = s * per_shard + i
        key = f'd{n % 2}/{"k" * (90 if n % 4 == 1 else 3)}{n:04d}'
        caption = f'caption {n}'.encode()
        if n % 5 == 2:  # a .png with a .json caption, caption first
          add_member(tar, f'{key}.json', b'{"caption": "' + caption + b'"}')
          add_member(tar, f'{key}.png', encode(np.full((6, 6, 3), n, np.uint8), 'PNG'))
        else:
          add_member(tar, f'{key}.jpg', good_image(n, size=8))
          if n % 7 != 3:  # n = 3, 10: an image without caption
            add_member(tar, f'{key}.txt', caption)
      add_member(tar, f'meta{s}.cls', b'7')  # no image nor caption: not a sample
      add_member(tar, f'only{s}.txt', f'caption only {s}'.encode())  # a sample without image
    paths.append(path)
  return os.path.join(folder, f'mixed-{{000..{shards - 1:03d}}}.tar'), paths

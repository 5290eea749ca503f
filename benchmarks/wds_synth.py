"""A large synthetic webdataset corpus written fast: tiny valid PNGs and short captions.

Every sample is two tar members (`NNNNNNNNNN.png`, `NNNNNNNNNN.txt`), each one 512-byte header and
one 512-byte data block, so a sample costs 2 KiB on disk (2M samples: ~4 GiB). The ustar headers
are written here from a template (not through `tarfile`, whose per-member cost would make 4M
members take many minutes on two cores); `tarfile` reads them back as ordinary members. The images
are a few precomputed 8x8 PNGs of different colours, so decoding costs what a tiny real image costs.
"""

import io
import json
import multiprocessing
import os

import numpy as np
from PIL import Image

PALETTE = 32  # distinct images
_BLOCK = 512
_KEY_DIGITS = 10


def tiny_pngs(count: int = PALETTE, size: int = 8) -> list[bytes]:
  """`count` distinct size x size RGB PNGs (a colour gradient each)."""
  rng = np.random.default_rng(0)
  out = []
  for _ in range(count):
    base = rng.integers(0, 256, 3)
    ramp = np.arange(size, dtype=np.int64)[:, None, None] * rng.integers(1, 16, 3)
    pixels = ((base + ramp) % 256).astype(np.uint8) * np.ones((1, size, 1), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format='PNG')
    out.append(buffer.getvalue())
  return out


def _header_template() -> bytearray:
  header = bytearray(_BLOCK)
  header[100:108] = b'0000644\0'  # mode
  header[108:116] = b'0000000\0'  # uid
  header[116:124] = b'0000000\0'  # gid
  header[136:148] = b'00000000000\0'  # mtime
  header[156:157] = b'0'  # regular file
  header[257:265] = b'ustar\x0000'
  return header


_TEMPLATE = _header_template()
_TEMPLATE_SUM = sum(_TEMPLATE) + 8 * ord(' ')  # the checksum field counts as spaces


def member(name: bytes, data: bytes) -> bytes:
  """One tar member: ustar header + data padded to 512 bytes."""
  header = bytearray(_TEMPLATE)
  header[0:len(name)] = name
  size = b'%011o\0' % len(data)
  header[124:136] = size
  checksum = _TEMPLATE_SUM + sum(name) + sum(size)
  header[148:156] = b'%06o\0 ' % checksum
  return bytes(header) + data + b'\0' * (-len(data) % _BLOCK)


def caption(i: int) -> bytes:
  """A short caption that differs per sample."""
  return b'a tiny synthetic picture number %d of colour %d' % (i, i % PALETTE)


def shard_bytes(shard: int, per_shard: int, pngs: list[bytes]) -> bytes:
  """The bytes of shard `shard` (samples shard*per_shard ...)."""
  parts = []
  for i in range(shard * per_shard, (shard + 1) * per_shard):
    key = b'%0*d' % (_KEY_DIGITS, i)
    parts.append(member(key + b'.png', pngs[i % len(pngs)]))
    parts.append(member(key + b'.txt', caption(i)))
  parts.append(b'\0' * (2 * _BLOCK))  # end-of-archive marker
  return b''.join(parts)


def shard_name(shard: int) -> str:
  """File name of shard `shard`."""
  return f'shard-{shard:06d}.tar'


def spec(folder: str, shards: int) -> str:
  """The wds: data spec of the first `shards` shards under `folder`."""
  return f'wds:{folder}/shard-{{000000..{shards - 1:06d}}}.tar'


def _write(job: tuple[str, int, int]) -> None:
  folder, shard, per_shard = job
  path = os.path.join(folder, shard_name(shard))
  with open(path + '.partial', 'wb') as f:
    f.write(shard_bytes(shard, per_shard, _PNGS))
  os.replace(path + '.partial', path)


_PNGS = tiny_pngs()


def build(folder: str, shards: int, per_shard: int, processes: int = 2) -> bool:
  """Writes the corpus unless `folder` already holds it (a marker records the sizes); returns
  whether it wrote anything."""
  marker = os.path.join(folder, 'corpus.json')
  want = {'shards': shards, 'samples_per_shard': per_shard, 'format': 1}
  if os.path.exists(marker):
    with open(marker) as f:
      found = json.load(f)
    if found == want:
      return False
    raise SystemExit(f'error: {folder} holds another corpus ({found}); use another --corpus_dir')
  os.makedirs(folder, exist_ok=True)
  jobs = [(folder, s, per_shard) for s in range(shards)
          if not os.path.exists(os.path.join(folder, shard_name(s)))]  # resumes a cut build
  if processes > 1 and len(jobs) > 1:
    with multiprocessing.get_context('fork').Pool(processes) as pool:
      for _ in pool.imap_unordered(_write, jobs, chunksize=8):
        pass
  else:
    for job in jobs:
      _write(job)
  with open(marker, 'w') as f:
    json.dump(want, f)
  return True

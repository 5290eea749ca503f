"""A search index on disk or in a bucket: embeddings and keys in chunks, with a manifest.

  INDEX/manifest.json                  settings, count, dim, binary bits, the finished chunks
  INDEX/chunk_00000.emb.npy            [rows, dim] float32 unit embeddings, or [rows, bits/8]
                                       uint8 packed sign codes when the index is binary
  INDEX/chunk_00000.keys.p<P>.npy      the sample keys of the rows process P read (unicode array)
  INDEX/chunk_00000.rows.p<P>.npy      ...and those rows' positions in the chunk

A chunk enters the manifest only after all of its files are written (the manifest is rewritten
atomically after each chunk), so a killed job leaves a manifest of finished chunks and a rerun
continues after the last of them. Files are written with np.save(allow_pickle=False).
"""

import io
import json
from typing import Callable, Iterator

import numpy as np

from data import storage
from data.errors import ConfigError

MANIFEST = 'manifest.json'
# (start, stop) -> (unit embeddings of rows start..stop-1, {row: key} for the rows this process read)
EmbedChunk = Callable[[int, int], tuple[np.ndarray, dict[int, str]]]


def save_npy(path: str, array: np.ndarray) -> None:
  """np.save to a local path or a bucket (atomically), no pickle."""
  buffer = io.BytesIO()
  np.save(buffer, np.asarray(array), allow_pickle=False)
  storage.write_bytes(path, buffer.getvalue())


def load_npy(path: str) -> np.ndarray:
  """np.load from a local path or a bucket, no pickle."""
  return np.load(io.BytesIO(storage.read_bytes(path)), allow_pickle=False)


def read_manifest(index: str) -> dict | None:
  """The index's manifest, or None when there is none yet."""
  path = storage.join(index, MANIFEST)
  return json.loads(storage.read_text(path)) if storage.exists(path) else None


def _write_manifest(index: str, manifest: dict) -> None:
  storage.write_text(storage.join(index, MANIFEST), json.dumps(manifest, indent=2))


def start_or_resume(index: str, settings: dict, count: int, chunk_rows: int, binary: int) -> dict:
  """The manifest to continue: the existing one when its settings match, else a new empty one."""
  manifest = read_manifest(index)
  fresh = {'version': 1, 'settings': settings, 'count': count, 'chunk_rows': chunk_rows,
           'binary': binary, 'dim': None, 'chunks': [], 'complete': False}
  if manifest is None:
    return fresh
  for key in ('settings', 'count', 'chunk_rows', 'binary'):
    if manifest[key] != fresh[key]:
      raise ConfigError(f'{index} holds an index made with another {key} ({manifest[key]!r}, not '
                        f'{fresh[key]!r}); pick another --out or delete it')
  return manifest


def write_index(index: str, manifest: dict, embed_chunk: EmbedChunk, process: int,
                barrier: Callable[[str], None], encode: Callable[[np.ndarray], np.ndarray],
                max_chunks: int | None = None) -> int:
  """Embeds and writes the chunks the manifest lacks (at most `max_chunks`); returns how many."""
  count, rows = manifest['count'], manifest['chunk_rows']
  written = 0
  for start in range(len(manifest['chunks']) * rows, count, rows):
    if max_chunks is not None and written >= max_chunks:
      break
    stop = min(start + rows, count)
    name = f'chunk_{start // rows:05d}'
    emb, keys = embed_chunk(start, stop)
    mine = np.array(sorted(r for r in keys if start <= r < stop), np.int64)
    save_npy(storage.join(index, f'{name}.keys.p{process}.npy'),
             np.array([keys[r] for r in mine], dtype=str))
    save_npy(storage.join(index, f'{name}.rows.p{process}.npy'), mine - start)
    barrier(f'search_index_{name}')  # every process's keys are down before the chunk counts
    if process == 0:
      save_npy(storage.join(index, f'{name}.emb.npy'), encode(emb))
      manifest['dim'] = int(emb.shape[1])
      manifest['chunks'].append({'name': name, 'start': start, 'rows': stop - start})
      manifest['complete'] = stop == count
      _write_manifest(index, manifest)
    written += 1
  if process == 0 and count == 0 and not manifest['complete']:
    manifest['complete'] = True
    _write_manifest(index, manifest)
  return written


def open_index(index: str) -> dict:
  """The manifest of a finished index (ConfigError when missing or unfinished)."""
  manifest = read_manifest(index)
  if manifest is None:
    raise ConfigError(f'{index} is not a search index (no {MANIFEST}); make one with '
                      '`python -m eval.search index`')
  if not manifest['complete']:
    raise ConfigError(f'{index} is unfinished ({len(manifest["chunks"])} chunks of '
                      f'{-(-manifest["count"] // manifest["chunk_rows"])}); rerun the index job')
  return manifest


def chunks(index: str, manifest: dict) -> Iterator[np.ndarray]:
  """The chunks' embeddings (or packed codes), in order, one at a time."""
  for chunk in manifest['chunks']:
    yield load_npy(storage.join(index, f'{chunk["name"]}.emb.npy'))


def rows(index: str, manifest: dict, ids: np.ndarray) -> np.ndarray:
  """The stored rows of the given ids (any shape), reading only the chunks that hold them."""
  flat = np.asarray(ids).ravel()
  out = None
  for chunk, data in zip(manifest['chunks'], chunks(index, manifest)):
    inside = (flat >= chunk['start']) & (flat < chunk['start'] + chunk['rows'])
    if out is None:
      out = np.zeros((len(flat), data.shape[1]), data.dtype)
    out[inside] = data[flat[inside] - chunk['start']]
  return out.reshape(*np.shape(ids), -1)


def keys(index: str, manifest: dict) -> np.ndarray:
  """[count] sample keys, gathered from every process's key files."""
  out = np.empty(manifest['count'], dtype=object)
  for chunk in manifest['chunks']:
    prefix = storage.join(index, f'{chunk["name"]}.keys.p')
    for path in storage.glob(prefix + '*.npy'):
      process = path[len(prefix):-len('.npy')]
      where = load_npy(storage.join(index, f'{chunk["name"]}.rows.p{process}.npy'))
      out[chunk['start'] + where] = load_npy(path)
  return out.astype(str)

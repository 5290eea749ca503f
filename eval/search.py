"""Cross-modal search over a run's image embeddings.

  python -m eval.search index --workdir RUN --data SPEC --out INDEX [--step N] [--batch_size N]
      [--chunk_rows N] [--binary BITS] [--max_chunks N]
  python -m eval.search query --index INDEX --workdir RUN (--text T | --image PATH | both) [--k 10]
      [--dims D] [--shortlist_dims D --shortlist K]

`index` embeds every image of a data source (sharded over this job's devices and processes) into
INDEX (local or gs:// / s3://), chunk by chunk; a killed or `--max_chunks`-limited job continues
where it stopped when run again. `query` prints the top k keys with their scores: exact search over
the chunks, or adaptive search for Matryoshka runs (shortlist at a prefix, rerank at full width,
with its recall against exact search). An image+text query is the normalised sum of both
embeddings, as ALIGN composes them.
"""

from pretrain.backends.cpu import host_memory

if __name__ == '__main__':  # first, before jax loads: the malloc the trainer runs with
  host_memory.restart_with_huge_page_malloc()

import argparse
import sys

import jax
import numpy as np

from data import storage
from data.errors import ConfigError
from data.records import DEFAULT_MAX_PIXELS, BadRecord, decode_image
from data.sources import open_source
from data.transforms import eval_transform
from eval import binary_codes, search_index, search_lib
from eval.provenance import eval_settings
from eval.run_model import RunModel


def parse(argv: list[str]) -> argparse.Namespace:
  """The two subcommands' flags."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest='command', required=True)
  index = sub.add_parser('index', help='embed a corpus into a search index')
  index.add_argument('--workdir', required=True, help='the training run (folder or bucket URL)')
  index.add_argument('--data', required=True, help='data spec of the corpus, e.g. shapes:retrieval')
  index.add_argument('--out', required=True, help='the index folder (local or bucket)')
  index.add_argument('--step', type=int, default=None, help='checkpoint (default: the newest)')
  index.add_argument('--batch_size', type=int, default=256)
  index.add_argument('--chunk_rows', type=int, default=65536, help='rows per index chunk')
  index.add_argument('--binary', type=int, default=0,
                     help='store sign codes of the first BITS dims (1 bit each) instead of floats')
  index.add_argument('--max_chunks', type=int, default=None,
                     help='stop after writing this many chunks (rerun to continue)')
  query = sub.add_parser('query', help='the top k of a text, image or image+text query')
  query.add_argument('--index', required=True)
  query.add_argument('--workdir', required=True, help='the run the index was made from')
  query.add_argument('--text', default=None)
  query.add_argument('--image', default=None, help='an image file (local or bucket)')
  query.add_argument('--k', type=int, default=10)
  query.add_argument('--dims', type=int, default=None, help='search at this prefix (Matryoshka)')
  query.add_argument('--shortlist_dims', type=int, default=None,
                     help='adaptive search: shortlist at this prefix, rerank at full width')
  query.add_argument('--shortlist', type=int, default=100, help='adaptive search: shortlist size')
  query.add_argument('--batch_size', type=int, default=8)
  return parser.parse_args(argv)


def _barrier(name: str) -> None:
  """Waits for every process (a no-op with one)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def build_index(args: argparse.Namespace) -> int:
  """Embeds the corpus into args.out, continuing an unfinished index; returns chunks written."""
  if args.chunk_rows < 1 or args.binary < 0:
    raise ConfigError('--chunk_rows must be >= 1 and --binary >= 0')
  previous = search_index.read_manifest(args.out)
  step = args.step
  if step is None and previous is not None:
    step = previous['settings']['step']  # continue with the checkpoint it was started with
  run = RunModel(args.workdir)
  size = run.config.model.image_size
  source = open_source(args.data, size, run.config.seed)
  step, embedder = run.embedder(step)
  settings = {'workdir': storage.absolute(args.workdir), 'step': step,
              **eval_settings(args.data, source, run.config.model)}
  manifest = search_index.start_or_resume(args.out, settings, len(source), args.chunk_rows,
                                          args.binary)
  _barrier('search_index_start')  # every process read the manifest before process 0 extends it

  def embed_chunk(start: int, stop: int):
    keys = {}

    def read(index: np.ndarray) -> np.ndarray:
      images = []
      for i in index:
        record = source[start + int(i)]
        keys[start + int(i)] = str(record['key'])
        images.append(eval_transform(record['image'], size))
      return np.stack(images)
    return search_lib.normalize(embedder.embed('images', read, stop - start, args.batch_size)), keys

  def encode(emb: np.ndarray) -> np.ndarray:
    return binary_codes.pack(emb, args.binary) if args.binary else emb.astype(np.float32)

  if jax.process_index() == 0:
    storage.makedirs(args.out)
  done = len(manifest['chunks'])
  written = search_index.write_index(args.out, manifest, embed_chunk, jax.process_index(),
                                     _barrier, encode, args.max_chunks)
  if jax.process_index() == 0:
    total = -(-manifest['count'] // manifest['chunk_rows'])
    print(f'index {args.out}: step {step}, {manifest["count"]} items, chunks {done} already there '
          f'+ {written} written of {total}', flush=True)
  return written


def embed_query(run: RunModel, embedder, text: str | None, image: str | None, batch: int,
                ) -> np.ndarray:
  """[1, D] unit embedding of the query (image+text: ALIGN's normalised sum)."""
  parts = []
  if image is not None:
    data = storage.read_bytes(image)
    pixels = eval_transform(decode_image(data, 'query', image, DEFAULT_MAX_PIXELS),
                            run.config.model.image_size)[None]
    parts.append(embedder.embed('images', lambda idx: pixels[idx], 1, batch))
  if text is not None:
    tokens = run.tokenizer.encode([text], run.config.model.context_length)
    parts.append(embedder.embed_texts(tokens, batch))
  return search_lib.normalize(parts[0]) if len(parts) == 1 else search_lib.compose(*parts)


def search(index: str, manifest: dict, query: np.ndarray, k: int, dims: int | None,
           shortlist_dims: int | None, shortlist: int) -> tuple[np.ndarray, np.ndarray, dict]:
  """(scores, ids, info) of the top k; info has the adaptive search's recall vs exact search."""
  bits = manifest['binary']
  if bits:
    distance, ids = binary_codes.hamming_topk(binary_codes.pack(query, bits),
                                              search_index.chunks(index, manifest), k)
    return distance, ids, {'scores': 'hamming distance'}
  exact = search_lib.search_chunks(query, search_index.chunks(index, manifest), k, dims)
  if shortlist_dims is None:
    return *exact, {'scores': 'cosine'}
  _, candidates = search_lib.search_chunks(query, search_index.chunks(index, manifest),
                                           max(shortlist, k), shortlist_dims)
  rows = search_index.rows(index, manifest, candidates)
  found = search_lib.rerank_rows(search_lib.prefix(query, dims), search_lib.prefix(rows, dims),
                                 candidates, k)
  recall = search_lib.recall_vs_exact(found[1], exact[1])
  return *found, {'scores': 'cosine', f'recall@{k} vs exact': recall}


def run_query(args: argparse.Namespace) -> None:
  """Prints the top k of the query: rank, score, key."""
  if args.text is None and args.image is None:
    raise ConfigError('query needs --text, --image or both')
  manifest = search_index.open_index(args.index)
  dim = manifest['dim']
  for name in ('dims', 'shortlist_dims'):
    value = getattr(args, name)
    if value is not None and not 1 <= value <= dim:
      raise ConfigError(f'--{name} {value}: the index has {dim} dimensions')
  if manifest['binary'] and (args.dims or args.shortlist_dims):
    raise ConfigError('a binary index is searched by Hamming distance: no --dims/--shortlist_dims')
  run = RunModel(args.workdir)
  step, embedder = run.embedder(manifest['settings']['step'])
  query = embed_query(run, embedder, args.text, args.image, args.batch_size)
  scores, ids, info = search(args.index, manifest, query, args.k, args.dims, args.shortlist_dims,
                             args.shortlist)
  if jax.process_index() != 0:
    return
  keys = search_index.keys(args.index, manifest)
  print(f'# step {step}, {manifest["count"]} items, ' +
        ', '.join(f'{k}: {v:.4f}' if isinstance(v, float) else f'{k}: {v}'
                  for k, v in info.items()))
  for rank, (score, i) in enumerate(zip(scores[0], ids[0]), 1):
    print(f'{rank}\t{score:.6f}\t{keys[i]}' if not manifest['binary'] else
          f'{rank}\t{int(score)}\t{keys[i]}')


def main(argv: list[str]) -> int:
  """The command line; bad input is one `error:` line, exit 2."""
  try:
    args = parse(argv)
    if args.command == 'index':
      build_index(args)
    else:
      run_query(args)
  except (ConfigError, FileNotFoundError, BadRecord) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))

"""Training data at LAION scale: index step, start-up, index memory and examples/s, extrapolated.

  python -m benchmarks.data_scale [--shards 2000] [--samples_per_shard 1000] [--corpus_dir DIR]
      [--gcs_shards N] [--skip_gcs] [--skip_local] [--index_workers 2] [--examples 4096]
      [--json PATH] [--smoke]

Builds (once, reused from --corpus_dir) a synthetic webdataset corpus of tiny PNGs and captions
(benchmarks/wds_synth.py), then for local disk and for a bucket on the GCS emulator
(fake-gcs-server on 127.0.0.1, tests/emulators.py; no network is crossed, so bucket figures are
client overhead, not a cloud's latency) measures:
- the index step: `python -m data.index SPEC --out DIR --workers N` when that module exists,
  else "n/a" (the index is built at start-up);
- training start-up: from spawning a fresh process (benchmarks/data_startup.py) to its first batch
  out of data.pipeline.train_dataset; `cold` = no index yet, `warm` = index files present;
- index bytes per sample: that process's VmRSS after opening the source minus before, / samples;
- decoded examples/s: `--examples` examples through the pipeline (64 px, in-process, 2 threads).
Then extrapolates each figure linearly to 400M and 1.8B samples.
"""

import argparse
import atexit
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks import wds_synth
from benchmarks.common import ROOT, child_env, print_table, write_json

TARGETS = {'400M': 400_000_000, '1.8B': 1_800_000_000}


def has_index_step() -> bool:
  """Whether this checkout has the one-time index step (`python -m data.index`)."""
  return importlib.util.find_spec('data.index') is not None


def run_child(argv: list[str], timeout: float) -> tuple[float, str]:
  """(seconds from spawn to exit, stdout) of `python -m ...argv` from this checkout."""
  start = time.time()
  result = subprocess.run([sys.executable, '-m', *argv], cwd=ROOT, env=child_env(),
                          capture_output=True, text=True, timeout=timeout)
  if result.returncode != 0:
    raise SystemExit(f'error: {" ".join(argv[:2])} failed:\n{result.stderr[-3000:]}')
  return time.time() - start, result.stdout


def startup(spec: str, index_dir: str, args) -> dict:
  """One fresh trainer-like process: start-up seconds, index bytes/sample, examples/s."""
  spawned = time.time()
  _, out = run_child(['benchmarks.data_startup', '--spec', spec, '--index_dir', index_dir,
                      '--examples', str(args.examples), '--batch', str(args.batch)],
                     args.timeout)
  m = json.loads(out.strip().splitlines()[-1])
  return {'startup_s': m['first_batch'] - spawned, 'open_s': m['opened'] - m['imported'],
          'samples': m['samples'],
          'index_bytes_per_sample': (m['rss_after'] - m['rss_before']) / m['samples'],
          'examples_per_s': m['examples_per_s']}


def clear(storage_mod, path: str) -> None:
  """Removes a folder (or bucket prefix) of index files so the next run starts without them."""
  if storage_mod.is_bucket(path):
    from etils import epath  # pylint: disable=import-outside-toplevel
    target = epath.Path(path)
    if target.exists():
      target.rmtree()
  elif os.path.exists(path):
    shutil.rmtree(path)


def measure(kind: str, spec: str, index_dir: str, shards: int, args) -> dict:
  """Every figure of one storage kind."""
  from data import storage  # pylint: disable=import-outside-toplevel
  clear(storage, index_dir)
  row = {'storage': kind, 'shards': shards, 'code': 'data.index' if has_index_step() else
         'json cache (before)'}
  if has_index_step():
    seconds, _ = run_child(['data.index', spec, '--out', index_dir, '--workers',
                            str(args.index_workers)], args.timeout)
    # Its fixed part (interpreter, imports), which does not grow with the corpus.
    fixed, _ = run_child(['data.index', '--help'], args.timeout)
    row.update(index_step_s=seconds, index_fixed_s=fixed, index_workers=args.index_workers,
               startup_cold_s=None)
  else:
    cold = startup(spec, index_dir, args)  # builds the per-shard JSON caches as it opens
    row.update(index_step_s=None, index_workers=None, startup_cold_s=cold['startup_s'],
               open_cold_s=cold['open_s'])
  warm = startup(spec, index_dir, args)
  row.update(samples=warm['samples'], startup_warm_s=warm['startup_s'], open_warm_s=warm['open_s'],
             index_bytes_per_sample=warm['index_bytes_per_sample'],
             examples_per_s=warm['examples_per_s'])
  return row


def gcs_corpus(local_dir: str, shards: int, objects_dir: str) -> tuple[str, str]:
  """Starts fake-gcs-server (objects kept in `objects_dir`, so an upload is reused by the next run)
  and uploads the first `shards` shards that are not there yet; returns (spec, index folder)."""
  import urllib.error  # pylint: disable=import-outside-toplevel
  from tests.emulators import Emulator  # pylint: disable=import-outside-toplevel
  emulator = Emulator('gs', objects_dir).start()
  atexit.register(emulator.stop)
  os.environ.update(emulator.env)  # before the first client is made; children inherit it
  try:
    bucket = emulator.bucket('data-scale')
  except urllib.error.HTTPError as e:
    if e.code != 409:  # 409: it exists from an earlier run
      raise
    bucket = 'gs://data-scale'
  import gcsfs  # pylint: disable=import-outside-toplevel
  fs = gcsfs.GCSFileSystem()
  folder = f'{bucket}/corpus'
  present = {p.rsplit('/', 1)[-1] for p in fs.ls(folder)} if fs.exists(folder) else set()
  todo = [wds_synth.shard_name(s) for s in range(shards)
          if wds_synth.shard_name(s) not in present]
  if todo:
    start = time.time()
    print(f'uploading {len(todo)} shards to the emulator ...', flush=True)
    fs.put([os.path.join(local_dir, n) for n in todo], [f'{folder}/{n}' for n in todo])
    print(f'uploaded in {time.time() - start:.0f} s', flush=True)
  return wds_synth.spec(folder, shards), f'{bucket}/index'


def extrapolate(row: dict, extra_workers: int) -> list[dict]:
  """Each figure at 400M and 1.8B samples, linear in the corpus size.

  Start-up = a fixed part (interpreter, imports, pipeline, first batch) + opening the source, and
  the index step = its fixed part (`--help`: interpreter, imports) + the rest; only the second
  terms grow with the corpus (the index step's as if its workers scaled ideally). Examples/s does
  not depend on the corpus size.
  """
  out = []
  for label, n in TARGETS.items():
    scale = n / row['samples']
    e = {'storage': row['storage'], 'code': row['code'], 'samples': label}
    if row['index_step_s'] is not None:
      fixed = row['index_fixed_s']
      grows = (row['index_step_s'] - fixed) * scale
      e['index_step_h'] = (fixed + grows) / 3600
      e[f'index_step_h_{extra_workers}_workers'] = (
          fixed + grows * row['index_workers'] / extra_workers) / 3600
    for key in ('cold', 'warm'):
      if row.get(f'startup_{key}_s') is not None:
        fixed = row[f'startup_{key}_s'] - row[f'open_{key}_s']
        e[f'startup_{key}_h'] = (fixed + row[f'open_{key}_s'] * scale) / 3600
    e['index_gib_per_process'] = row['index_bytes_per_sample'] * n / 2**30
    e['examples_per_s'] = row['examples_per_s']
    out.append(e)
  return out


def rounded(rows: list[dict]) -> list[dict]:
  """Rows with floats rounded for the table and JSON; None shown as n/a."""
  def fmt(v):
    if v is None:
      return 'n/a'
    return round(v, 3 if abs(v) < 10 else 1) if isinstance(v, float) else v
  return [{k: fmt(v) for k, v in row.items()} for row in rows]


def main(argv: list[str]) -> int:
  """Command-line entry point."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--shards', type=int, default=2000)
  parser.add_argument('--samples_per_shard', type=int, default=1000)
  parser.add_argument('--corpus_dir', default=None,
                      help='where the corpus is built once and reused (default: '
                      '~/.cache/data_scale/SHARDSxSAMPLES)')
  parser.add_argument('--gcs_shards', type=int, default=0,
                      help='shards uploaded to and read from the emulator (0: all)')
  parser.add_argument('--skip_gcs', action='store_true')
  parser.add_argument('--skip_local', action='store_true')
  parser.add_argument('--index_workers', type=int, default=2)
  parser.add_argument('--extrapolate_workers', type=int, default=64,
                      help='also give the index step at this many workers (ideal scaling)')
  parser.add_argument('--examples', type=int, default=4096)
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--timeout', type=float, default=3600, help='seconds per child process')
  parser.add_argument('--json', '--out', dest='json', default='benchmarks/results/data_scale.json')
  parser.add_argument('--smoke', action='store_true', help='tiny sizes in a temporary folder, for CI')
  args = parser.parse_args(argv)
  if args.skip_gcs and args.skip_local:
    parser.error('--skip_gcs and --skip_local leave nothing to measure')
  if args.smoke:
    args.shards, args.samples_per_shard, args.examples, args.batch = 3, 20, 16, 8
    if not args.corpus_dir:
      args.corpus_dir = tempfile.mkdtemp()
      atexit.register(shutil.rmtree, args.corpus_dir, True)  # after the emulator has stopped
  corpus = os.path.abspath(args.corpus_dir or os.path.expanduser(
      f'~/.cache/data_scale/{args.shards}x{args.samples_per_shard}'))
  start = time.time()
  if wds_synth.build(os.path.join(corpus, 'wds'), args.shards, args.samples_per_shard):
    print(f'built the corpus in {time.time() - start:.0f} s: {corpus}', flush=True)
  scratch = os.path.join(corpus, 'scratch')
  rows = [] if args.skip_local else [
      measure('local', wds_synth.spec(os.path.join(corpus, 'wds'), args.shards),
              os.path.join(scratch, 'index'), args.shards, args)]
  if not args.skip_gcs:
    shards = min(args.gcs_shards or args.shards, args.shards)
    spec, index_dir = gcs_corpus(os.path.join(corpus, 'wds'), shards,
                                 os.path.join(corpus, 'gcs_objects'))
    rows.append(measure('gcs emulator', spec, index_dir, shards, args))
  extra = [e for row in rows for e in extrapolate(row, args.extrapolate_workers)]
  rows, extra = rounded(rows), rounded(extra)
  print_table(rows, list(rows[0]))
  print()
  print_table(extra, list(dict.fromkeys(k for e in extra for k in e)))
  write_json(args.json, {'results': rows, 'extrapolated': extra,
                         'machine': platform.processor() or platform.machine(),
                         'cpus': os.cpu_count()})
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))

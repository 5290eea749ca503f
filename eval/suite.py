"""A run's checkpoints on a list of CLIP_benchmark-format sets: zero-shot classification for the
sets whose samples carry .cls, image-text retrieval for those with .txt captions; one table.

  python -m eval.suite --workdir RUN --benchmarks NAMES|FILE|LIST --data_root ROOT
      [--split test] [--step N | --once | --watch] [--batch_size N] [--dims 32,64,full]
NAMES: comma-separated set names (`imagenet1k,vtab/cifar10`); FILE: one name a line, like
CLIP_benchmark's tasks/*.txt; LIST: a built-in list (imagenet_robustness, vtab, vtab+, retrieval).
Set NAME is read from ROOT/wds_NAME' (`/` -> `-`, eval.benchmark_data). Each checkpoint is
restored once and each set embedded once; results go to RUN/eval/suite/step_N.json, .md and .csv.
--dims (default: a Matryoshka run's prefixes and the full width) adds `<metric>@K` columns.
"""

from pretrain.backends.cpu import host_memory

if __name__ == '__main__':  # first, before jax loads: the malloc the trainer runs with
  host_memory.restart_with_huge_page_malloc()

import argparse
import json
import sys

import numpy as np

from data import storage
from data.errors import ConfigError
from data.sources import index_cache_dir
from eval import benchmark_meta
from eval.benchmark_data import BenchmarkSource, dataset_folder, open_benchmark
from eval.job import Outputs, add_common_flags, cli, timed_evaluator
from eval.prefixes import add_dims_flag, parse_dims, with_prefixes
from eval.provenance import eval_settings
from eval.retrieval import evaluate_retrieval
from eval.run_model import RunModel
from eval.suite_table import average, to_csv, to_markdown
from eval.zeroshot_lib import evaluate_zeroshot


def parse(argv: list[str]) -> argparse.Namespace:
  """The job's flags."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_common_flags(parser, dataset=False)
  parser.add_argument('--benchmarks', required=True,
                      help='set names (comma-separated), a file of names, or a built-in list: '
                           + ', '.join(benchmark_meta.collections()))
  parser.add_argument('--data_root', required=True,
                      help='folder (or gs://...) holding the wds_NAME folders')
  parser.add_argument('--split', default='test', help='split folder inside each set')
  add_dims_flag(parser)
  return parser.parse_args(argv)


def benchmark_names(spec: str) -> list[str]:
  """The set names `--benchmarks` gives (a file when one exists at that path)."""
  if spec not in benchmark_meta.collections() and ',' not in spec and storage.is_file(spec):
    return benchmark_meta.parse_benchmarks(spec, storage.read_text)
  return benchmark_meta.parse_benchmarks(spec)


def open_sources(names: list[str], data_root: str, split: str,
                 cache_dir: str | None) -> dict[str, BenchmarkSource]:
  """Every set, opened (and indexed) before any checkpoint is restored: a missing set or class
  list fails in seconds, not after the first model load."""
  storage.check_reachable(data_root, '--data_root')
  lists = ', '.join(benchmark_meta.collections())
  sources = {}
  for name in names:
    known = name in benchmark_meta.known_names()
    if not known and not storage.is_dir(dataset_folder(data_root, name)):
      raise ConfigError(f'unknown benchmark {name!r}: not a CLIP_benchmark set name nor a list '
                        f'({lists}), and {dataset_folder(data_root, name)} does not exist')
    source = open_benchmark(data_root, name, split, cache_dir=cache_dir)
    if source.task == 'classification' and not source.classnames:
      raise ConfigError(f'benchmark {name}: {source.folder} has no classnames.txt and '
                        'CLIP_benchmark ships no class names for it')
    sources[name] = source
  return sources


def evaluate_set(embedder, run: RunModel, source: BenchmarkSource, batch_size: int,
                 dims: tuple[int, ...] | None = None) -> dict:
  """One set's metrics (CLIP_benchmark's names; `<name>@K` at each narrower prefix of `dims`), from
  one embedding pass over its images."""
  kwargs = dict(image_size=run.config.model.image_size,
                context_length=run.config.model.context_length, batch_size=batch_size, dims=dims)
  if source.task == 'classification':
    metrics = evaluate_zeroshot(embedder, run.tokenizer, source, source.templates,
                                classnames=source.classnames, **kwargs)
    metrics.pop('confusion')  # the single-set job (eval.zeroshot) keeps it; the table does not
  else:
    metrics = evaluate_retrieval(embedder, run.tokenizer, source, **kwargs)
  return {'task': source.task, **metrics}


class SuiteOutputs(Outputs):
  """RUN/eval/suite/step_N.json (+ .md, .csv): every set's metrics and the average."""

  def write(self, step: int, metrics: dict, extras: dict[str, np.ndarray]) -> None:
    """The JSON (atomically), the tables, TB scalars `suite/<label>/<set>/<metric>`, the table."""
    del extras
    if not self.is_main:
      return
    results = metrics['results']
    means, counts = average(results)
    storage.write_text(self.path(step), json.dumps({  # one write: a reader never sees half
        'step': step, 'benchmarks': list(results), 'results': results, 'average': means,
        'average_over': counts, 'wall_s': metrics['wall_s'],
        'settings_hash': self.settings_hash, 'given': self.given, 'settings': self.settings},
        indent=2))
    base = self.path(step)[:-len('.json')]
    storage.write_text(base + '.md', to_markdown(results, step))
    storage.write_text(base + '.csv', to_csv(results))
    flat = {f'{name}/{k}': v for name, r in results.items() for k, v in r.items()
            if isinstance(v, float)}
    self._write_scalars(step, {**flat, **{f'average/{k}': v for k, v in means.items()}})
    print(to_markdown(results, step) + f'({metrics["wall_s"]:.1f}s; {self.path(step)})',
          flush=True)


def make_job(args: argparse.Namespace):
  """(outputs, evaluate) for the run and sets the flags name."""
  names = benchmark_names(args.benchmarks)
  run = RunModel(args.workdir)
  sources = open_sources(names, args.data_root, args.split, index_cache_dir(args.workdir))
  widths = parse_dims(args.dims, run.config)
  settings = {'split': args.split, 'sets': {
      name: eval_settings(f'wds:{storage.join(source.folder, args.split, "*.tar")}', source,
                          run.config.model, source.classnames, source.templates)
      for name, source in sources.items()}}
  settings = with_prefixes(settings, widths)
  given = {'benchmarks': args.benchmarks, 'data_root': args.data_root, 'names': names}
  label = ''.join(c if c.isalnum() or c in '-_.+' else '_' for c in args.benchmarks)[-40:]
  outputs = SuiteOutputs(args.workdir, 'suite', label, settings, given,
                         folder=storage.join(args.workdir, 'eval', 'suite'))

  def compute(embedder):
    results = {name: evaluate_set(embedder, run, source, args.batch_size, widths)
               for name, source in sources.items()}
    return {'results': results}, {}

  return outputs, timed_evaluator(run, outputs, compute)


if __name__ == '__main__':
  sys.exit(cli(parse, make_job, sys.argv[1:]))

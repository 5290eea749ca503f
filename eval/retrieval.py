"""Image-text retrieval of a run's checkpoints.

  python -m eval.retrieval --workdir RUN --dataset SPEC [--step N | --once | --watch] [--batch_size N]
      [--dims 32,64,full]
      [--hubness inverted_softmax|qb_norm --query_bank SPEC] [--binary BITS [--binary_rerank K]]
"""

from pretrain.backends.cpu import host_memory

if __name__ == '__main__':  # first, before jax loads: the malloc the trainer runs with
  host_memory.restart_with_huge_page_malloc()

import argparse
import sys
from typing import Sequence

import numpy as np

from data.sources import open_source
from eval.embed import Embedder
from eval.job import Outputs, add_common_flags, cli, dataset_name, timed_evaluator
from eval.prefixes import add_dims_flag, metrics_at_prefixes, parse_dims, truncate, with_prefixes
from eval.provenance import eval_settings
from eval import retrieval_variants
from eval.run_model import RunModel


def evaluate_retrieval(embedder: Embedder, tokenizer, source, *, image_size: int,
                       context_length: int, batch_size: int,
                       dims: Sequence[int] | None = None, variant=None, bank_source=None) -> dict:
  """Embeds every image once and every caption of every image once; returns the metrics (with
  `dims`, also at each narrower prefix: eval/prefixes.py; `variant`: hubness reduction or binary
  codes, eval/retrieval_variants.py)."""
  captions, owner = [], []
  for i in range(len(source)):
    texts = source.text(i)
    captions.extend(texts)
    owner.extend([i] * len(texts))

  image_emb = embedder.embed_images(source, image_size, batch_size)
  text_emb = embedder.embed_texts(tokenizer.encode(captions, context_length), batch_size)
  variant = variant or retrieval_variants.parse_defaults()
  banks = None if bank_source is None else retrieval_variants.embed_bank(
      embedder, tokenizer, bank_source, variant.query_bank_size, image_size, context_length,
      batch_size)

  def at_width(k: int) -> dict:
    return retrieval_variants.variant_metrics(
        variant, truncate(image_emb, k), truncate(text_emb, k), np.asarray(owner),
        banks and tuple(truncate(bank, k) for bank in banks))

  metrics = metrics_at_prefixes(tuple(dims) if dims else (image_emb.shape[-1],), at_width)
  metrics.update(num_examples=len(source), num_captions=len(captions))
  return metrics


def parse(argv: list[str]) -> argparse.Namespace:
  """The job's flags."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_common_flags(parser)
  add_dims_flag(parser)
  retrieval_variants.add_flags(parser)
  return parser.parse_args(argv)


def make_job(args: argparse.Namespace):
  """(outputs, evaluate) for the run and dataset the flags name."""
  retrieval_variants.check(args)
  run = RunModel(args.workdir)
  source = open_source(args.dataset, run.config.model.image_size, run.config.seed)
  widths = parse_dims(args.dims, run.config)
  bank_source = None if args.hubness == 'none' else open_source(
      args.query_bank, run.config.model.image_size, run.config.seed)
  settings = eval_settings(args.dataset, source, run.config.model)
  settings.update(retrieval_variants.settings(args, bank_source))
  outputs = Outputs(args.workdir, 'retrieval', dataset_name(source, args.dataset),
                    with_prefixes(settings, widths),
                    {'dataset': args.dataset})

  def compute(embedder):
    metrics = evaluate_retrieval(embedder, run.tokenizer, source,
                                 image_size=run.config.model.image_size,
                                 context_length=run.config.model.context_length,
                                 batch_size=args.batch_size, dims=widths, variant=args,
                                 bank_source=bank_source)
    return metrics, {}

  return outputs, timed_evaluator(run, outputs, compute)


if __name__ == '__main__':
  sys.exit(cli(parse, make_job, sys.argv[1:]))

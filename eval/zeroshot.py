"""Zero-shot classification of a run's checkpoints.

  python -m eval.zeroshot --workdir RUN --dataset SPEC [--classnames FILE] [--templates NAME|FILE]
      [--step N | --once | --watch] [--batch_size N] [--dims 32,64,full]
Without --templates: CLIP_benchmark's for a tfds set it knows (tfds:cifar10 -> its 18), else
CLIP's 80; tfds ImageNet sets are scored against CLIP's curated class names, not WordNet ids.
"""

from pretrain.backends.cpu import host_memory

if __name__ == '__main__':  # first, before jax loads: the malloc the trainer runs with
  host_memory.restart_with_huge_page_malloc()

import argparse
import sys

from data import storage
from data.sources import open_source
from eval.classnames import resolve_classnames
from eval.job import Outputs, add_common_flags, cli, dataset_name, timed_evaluator
from eval.prefixes import add_dims_flag, parse_dims, with_prefixes
from eval.provenance import eval_settings
from eval.run_model import RunModel
from eval.templates import default_templates, load_templates
from eval.zeroshot_lib import evaluate_zeroshot


def parse(argv: list[str]) -> argparse.Namespace:
  """The job's flags."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_common_flags(parser)
  parser.add_argument('--classnames', default=None,
                      help='file with one class name per line, in label order (or every class '
                           'of a set with named labels once, in any order: matched by name)')
  parser.add_argument('--templates', default=None,
                      help="built-in set name or a file (default: CLIP_benchmark's for a tfds set "
                           "it knows, else clip80)")
  add_dims_flag(parser)
  return parser.parse_args(argv)


def make_job(args: argparse.Namespace):
  """(outputs, evaluate) for the run and dataset the flags name."""
  run = RunModel(args.workdir)
  templates = (load_templates(args.templates) if args.templates
               else default_templates(args.dataset))
  source = open_source(args.dataset, run.config.model.image_size, run.config.seed)
  classnames = resolve_classnames(source, args.dataset, args.classnames)
  widths = parse_dims(args.dims, run.config)
  settings = with_prefixes(eval_settings(args.dataset, source, run.config.model, classnames,
                                         templates), widths)
  given = {'dataset': args.dataset, 'templates': args.templates,
           'classnames': args.classnames and storage.absolute(args.classnames)}
  outputs = Outputs(args.workdir, 'zeroshot', dataset_name(source, args.dataset), settings, given)

  def compute(embedder):
    metrics = evaluate_zeroshot(
        embedder, run.tokenizer, source, templates, image_size=run.config.model.image_size,
        context_length=run.config.model.context_length, batch_size=args.batch_size,
        classnames=classnames, dims=widths)
    return metrics, {'confusion': metrics.pop('confusion')}

  return outputs, timed_evaluator(run, outputs, compute)


if __name__ == '__main__':
  sys.exit(cli(parse, make_job, sys.argv[1:]))

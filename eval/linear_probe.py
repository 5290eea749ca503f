"""Linear probe and few-shot probes of a run's checkpoints (image embeddings, frozen).

  python -m eval.linear_probe --workdir RUN --dataset NAME --data_root ROOT [--shots 1,5,10,25]
      [--seeds 3] [--holdout 0.2] [--step N | --once | --watch] [--batch_size N]
  python -m eval.linear_probe --workdir RUN --train SPEC --test SPEC [...]

A CLIP_benchmark-format set NAME is read from ROOT/wds_NAME' (eval.benchmark_data), its `train`
split to fit and its `test` split to score (--train_split / --split); --train/--test take any two
labelled data specs instead. The probe itself is eval.linear_probe_lib's.
"""

from pretrain.backends.cpu import host_memory

if __name__ == '__main__':  # first, before jax loads: the malloc the trainer runs with
  host_memory.restart_with_huge_page_malloc()

import argparse
import sys

import numpy as np

from data.errors import ConfigError
from data.sources import open_source
from eval import linear_probe_lib
from eval.job import Outputs, add_common_flags, cli, dataset_name, timed_evaluator
from eval.provenance import dataset_identity, eval_settings
from eval.run_model import RunModel
from eval.search_lib import normalize
from eval.zeroshot_lib import source_labels


def parse(argv: list[str]) -> argparse.Namespace:
  """The job's flags."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_common_flags(parser, dataset_required=False)
  parser.add_argument('--data_root', default=None,
                      help="folder (or bucket) of CLIP_benchmark's wds_<name> sets, for --dataset")
  parser.add_argument('--train_split', default='train', help='split of --dataset to fit on')
  parser.add_argument('--split', default='test', help='split of --dataset to score')
  parser.add_argument('--train', default=None, help='labelled data spec to fit on')
  parser.add_argument('--test', default=None, help='labelled data spec to score')
  parser.add_argument('--shots', default='', help='few-shot probes: shots per class, e.g. 1,5,10')
  parser.add_argument('--seeds', type=int, default=3, help='draws of each few-shot probe')
  parser.add_argument('--holdout', type=float, default=0.2,
                      help='fraction of train held out to choose the L2 regularisation')
  args = parser.parse_args(argv)
  args.shots = _shots(args.shots)
  if args.seeds < 1 or not 0 < args.holdout < 1:
    raise ConfigError(f'--seeds {args.seeds} must be >= 1 and --holdout {args.holdout} in (0, 1)')
  by_name, by_spec = args.dataset is not None, (args.train, args.test) != (None, None)
  if by_name == by_spec or (by_name and not args.data_root) or \
      (by_spec and None in (args.train, args.test)):
    raise ConfigError('name the data either as --dataset NAME --data_root ROOT or as '
                      '--train SPEC --test SPEC')
  return args


def _shots(text: str) -> list[int]:
  try:
    shots = [int(s) for s in text.split(',') if s.strip()]
  except ValueError:
    shots = [0]
  if any(k < 1 for k in shots):
    raise ConfigError(f'--shots {text!r}: positive integers separated by commas, e.g. 1,5,10')
  return sorted(set(shots))


def open_splits(args: argparse.Namespace, image_size: int, seed: int):
  """(train source, test source, train spec, test spec, output name)."""
  if args.dataset is None:
    train = open_source(args.train, image_size, seed)
    test = open_source(args.test, image_size, seed)
    return train, test, args.train, args.test, dataset_name(test, args.test)
  from eval.benchmark_data import dataset_folder, open_benchmark
  train = open_benchmark(args.data_root, args.dataset, args.train_split, image_size, seed)
  test = open_benchmark(args.data_root, args.dataset, args.split, image_size, seed)
  if 'classification' not in (train.task, test.task) or train.task != test.task:
    raise ConfigError(f'linear probe: {args.dataset} is a {test.task} set, not classification')
  folder = dataset_folder(args.data_root, args.dataset)
  specs = [f'wds:{folder}/{split}/*.tar' for split in (args.train_split, args.split)]
  return train, test, *specs, dataset_name(test, args.dataset)


def num_classes(train_labels, test_labels, *sources) -> int:
  """Classes: the sources' class names when they have them, else the largest label + 1."""
  named = [len(s.classnames) for s in sources if getattr(s, 'classnames', None)]
  largest = max(int(train_labels.max(initial=-1)), int(test_labels.max(initial=-1))) + 1
  return max([largest, *named])


def make_job(args: argparse.Namespace):
  """(outputs, evaluate) for the run and data the flags name."""
  run = RunModel(args.workdir)
  image_size = run.config.model.image_size
  train, test, train_spec, test_spec, name = open_splits(args, image_size, run.config.seed)
  train_y, test_y = source_labels(train), source_labels(test)
  if not len(train_y) or not len(test_y):
    raise ConfigError(f'linear probe: {name} has {len(train_y)} training and {len(test_y)} test '
                      'examples; both must be labelled and non-empty')
  classes = num_classes(train_y, test_y, train, test)
  settings = eval_settings(test_spec, test, run.config.model)
  settings['train'] = dataset_identity(train_spec, train)
  settings['probe'] = {'method': 'ridge on one-hot targets, closed form',
                       'l2_scales': list(linear_probe_lib.L2_SCALES), 'holdout': args.holdout,
                       'holdout_seed': linear_probe_lib.HOLDOUT_SEED, 'shots': args.shots,
                       'seeds': args.seeds, 'num_classes': classes}
  given = {'dataset': args.dataset, 'data_root': args.data_root, 'train': train_spec,
           'test': test_spec}
  outputs = Outputs(args.workdir, 'linear_probe', name, settings, given)

  def compute(embedder):
    train_x, test_x = (normalize(embedder.embed_images(source, image_size, args.batch_size))
                       for source in (train, test))
    metrics = linear_probe_lib.linear_probe(train_x, train_y, test_x, test_y, classes,
                                            args.holdout)
    confusion = metrics.pop('lp_confusion')
    if args.shots:
      metrics.update(linear_probe_lib.fewshot_probe(train_x, train_y, test_x, test_y, classes,
                                                    args.shots, args.seeds, args.holdout))
    metrics.update(num_examples=len(test_y), num_train=len(train_y))
    return metrics, {'confusion': confusion}

  return outputs, timed_evaluator(run, outputs, compute)


if __name__ == '__main__':
  sys.exit(cli(parse, make_job, sys.argv[1:]))

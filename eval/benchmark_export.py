"""Writes any data source as a CLIP_benchmark-format set (what eval.benchmark_data reads, and what
CLIP_benchmark's own `wds/NAME` reader reads).

  python -m eval.benchmark_export --source SPEC --data_root ROOT --name NAME [--split test]
      --task classification|retrieval [--count N] [--per_shard 1000] [--templates NAME|FILE]
      [--image_size 64]   (the size a generated source, shapes:, renders at)

A classification set takes the records' labels (.png + .cls, classnames.txt), a retrieval set
their captions (.png + .txt, every caption a line; dataset_type.txt says `retrieval`). Images are
PNG, lossless, so the set scores as its source does (JPEG would move the numbers). ROOT may be
a bucket. E.g. the shapes corpus as both kinds:
  python -m eval.benchmark_export --source shapes:zeroshot --data_root R --name shapes_cls \
      --task classification
  python -m eval.benchmark_export --source shapes:retrieval --data_root R --name shapes_ret \
      --task retrieval
"""

import argparse
import io
import sys
import tarfile

import numpy as np

from data import storage
from data.errors import ConfigError
from data.make_corpus import add_member, encode
from data.sources import open_source
from eval.benchmark_data import CLASSNAMES_FILE, TEMPLATES_FILE, dataset_folder
from eval.templates import load_templates


def _image_bytes(record: dict) -> bytes:
  image = record['image']
  return encode(np.asarray(image.convert('RGB') if hasattr(image, 'convert') else image), 'PNG')


def export(source, data_root: str, name: str, task: str, split: str = 'test',
           count: int | None = None, per_shard: int = 1000,
           templates: list[str] | None = None) -> str:
  """Writes `count` records (default all) of `source` as a `task` set; returns its folder."""
  if task == 'classification' and not getattr(source, 'classnames', None):
    raise ConfigError(f'{getattr(source, "name", "the source")} has no class names to classify by')
  count = len(source) if count is None else min(count, len(source))
  folder = dataset_folder(data_root, name)
  storage.check_reachable(folder, '--data_root')
  storage.makedirs(storage.join(folder, split))
  shards = -(-count // per_shard)
  for shard in range(shards):
    buffer = io.BytesIO()  # a whole shard, then one upload: objects cannot be appended to
    with tarfile.open(fileobj=buffer, mode='w') as tar:
      for i in range(shard * per_shard, min(count, (shard + 1) * per_shard)):
        record = source[i]
        add_member(tar, f's{i:09d}.png', _image_bytes(record))
        if task == 'classification':
          add_member(tar, f's{i:09d}.cls', str(int(record['label'])).encode())
        else:
          add_member(tar, f's{i:09d}.txt', '\n'.join(source.text(i)).encode())
    storage.write_bytes(storage.join(folder, split, f'{shard}.tar'), buffer.getvalue())
  storage.write_text(storage.join(folder, split, 'nshards.txt'), f'{shards}\n')
  if task == 'classification':
    storage.write_text(storage.join(folder, CLASSNAMES_FILE), '\n'.join(source.classnames) + '\n')
    if templates:
      storage.write_text(storage.join(folder, TEMPLATES_FILE), '\n'.join(templates) + '\n')
  else:
    storage.write_text(storage.join(folder, 'dataset_type.txt'), 'retrieval\n')
  return folder


def main(argv: list[str]) -> int:
  """The command line."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--source', required=True, help='data spec, e.g. shapes:zeroshot')
  parser.add_argument('--data_root', required=True)
  parser.add_argument('--name', required=True, help='set name; written to ROOT/wds_NAME')
  parser.add_argument('--split', default='test')
  parser.add_argument('--count', type=int, default=None)
  parser.add_argument('--per_shard', type=int, default=1000)
  parser.add_argument('--task', choices=('classification', 'retrieval'), required=True)
  parser.add_argument('--templates', default=None, help='also write these templates (name|file)')
  parser.add_argument('--image_size', type=int, default=64,
                      help="the size shapes: renders at (the run's model.image_size to score as "
                           'the run scores shapes: itself)')
  args = parser.parse_args(argv)
  try:
    source = open_source(args.source, image_size=args.image_size)
    templates = load_templates(args.templates) if args.templates else None
    folder = export(source, args.data_root, args.name, args.task, args.split, args.count,
                    args.per_shard, templates)
  except ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(folder)
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))

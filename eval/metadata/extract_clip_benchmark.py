"""Rebuilds clip_benchmark.json from the published clip-benchmark wheel (MIT); run once, offline.

  pip download clip-benchmark==1.6.2 --no-deps -d /tmp/cb && (cd /tmp/cb && unzip -q -o *.whl)
  python eval/metadata/extract_clip_benchmark.py /tmp/cb > eval/metadata/clip_benchmark.json

Reads the package's data files and the literal lists of its datasets/builder.py (parsed, never
imported: the package needs torch); the runtime reads only the JSON this prints.
"""

import ast
import json
import os
import sys

VERSION = '1.6.2'
# ImageNet variants whose CLIP_benchmark class names are a subset of ImageNet-1k's, chosen by the
# WordNet ids listed in builder.py (the list variable name per set).
SUBSETS = {'imagenet-a': 'imagenet_a_wnids', 'imagenet-r': 'imagenet_r_wnids',
           'imagenet-o': 'imagenet_o_wnids'}
FULL_IMAGENET = ('imagenetv2', 'imagenet_sketch')  # builder.py: ds.classes = ...["imagenet1k"]
# The lists of zero-shot classification and retrieval sets (sugar_crepe is caption selection).
COLLECTIONS = ('vtab', 'vtab+', 'retrieval', 'imagenet_robustness')


def literals(source: str) -> dict:
  """Every `name = <literal list/set/dict>` assignment in builder.py, at any depth."""
  found = {}
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
        isinstance(node.targets[0], ast.Name):
      try:
        found[node.targets[0].id] = ast.literal_eval(node.value)
      except ValueError:
        pass
  return found


def main(root: str) -> None:
  """Prints the metadata JSON."""
  folder = os.path.join(root, 'clip_benchmark', 'datasets')
  with open(os.path.join(folder, 'en_classnames.json')) as f:
    classnames = json.load(f)
  with open(os.path.join(folder, 'en_zeroshot_classification_templates.json')) as f:
    templates = json.load(f)
  with open(os.path.join(folder, 'builder.py')) as f:
    found = literals(f.read())
  wnids = found['all_imagenet_wordnet_ids']
  imagenet = classnames['imagenet1k']
  for name in FULL_IMAGENET:
    classnames[name] = imagenet
  for name, variable in SUBSETS.items():
    keep = set(found[variable])
    classnames[name] = [c for c, w in zip(imagenet, wnids) if w in keep]
  out = {
      'source': f'clip-benchmark {VERSION} (PyPI wheel), https://github.com/LAION-AI/CLIP_benchmark,'
                ' MIT License, Copyright (c) 2022 Mehdi Cherti: datasets/en_classnames.json, '
                'datasets/en_zeroshot_classification_templates.json, datasets/builder.py '
                '(dataset_collection, ImageNet WordNet ids and variant subsets)',
      'imagenet1k_wnids': wnids,
      'classnames': classnames,
      'templates': {k: v for k, v in templates.items() if k != 'dummy'},
      'collections': {k: v for k, v in found['dataset_collection'].items() if k in COLLECTIONS},
  }
  json.dump(out, sys.stdout, indent=1, ensure_ascii=False)
  print()


if __name__ == '__main__':
  main(sys.argv[1])

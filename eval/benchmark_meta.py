"""What CLIP_benchmark knows about the standard sets, by its dataset names: class names, zero-shot
templates, which sets are retrieval, and its named lists of sets.

The facts live in eval/metadata/clip_benchmark.json (taken from the published clip-benchmark
package; see eval/metadata/README.md). Lookups follow CLIP_benchmark's: `vtab/NAME` and `tfds/NAME`
also find NAME's entry, and a set without templates of its own gets ImageNet-1k's (CLIP's 80).
"""

import functools
import json
import os

from data.errors import ConfigError

METADATA = os.path.join(os.path.dirname(__file__), 'metadata', 'clip_benchmark.json')
DEFAULT_TEMPLATES = 'imagenet1k'  # CLIP_benchmark's fallback for sets without their own
RETRIEVAL_SETS = ('mscoco_captions', 'flickr30k', 'flickr8k', 'multilingual_mscoco_captions',
                  'flickr30k-200', 'crossmodal3600', 'xtd10', 'xtd200')
# tfds dataset names -> CLIP_benchmark's: their templates apply. Class names replace tfds's own
# only where tfds's are ImageNet's WordNet ids in CLIP_benchmark's order (checked, eval.classnames).
TFDS_NAMES = {'imagenet2012': 'imagenet1k', 'imagenet_v2': 'imagenetv2',
              'imagenet_sketch': 'imagenet_sketch', 'cifar10': 'cifar10', 'cifar100': 'cifar100',
              'mnist': 'mnist', 'stl10': 'stl10', 'svhn_cropped': 'svhn', 'food101': 'food101',
              'eurosat': 'eurosat', 'dtd': 'dtd', 'oxford_iiit_pet': 'pets',
              'oxford_flowers102': 'flowers', 'gtsrb': 'gtsrb', 'sun397': 'sun397',
              'resisc45': 'resisc45', 'patch_camelyon': 'pcam', 'country211': 'country211'}


@functools.cache
def _metadata() -> dict:
  with open(METADATA) as f:  # a file of this package, not a user path
    return json.load(f)


def _keys(name: str) -> list[str]:
  """The keys CLIP_benchmark looks a set up by: the name, then without a vtab/ or tfds/ prefix."""
  prefix, _, rest = name.partition('/')
  return [name, rest] if rest and prefix in ('vtab', 'tfds', 'wds') else [name]


def builtin_classnames(name: str) -> list[str] | None:
  """CLIP_benchmark's class names of a set (label order), or None when it ships none."""
  table = _metadata()['classnames']
  return next((list(table[k]) for k in _keys(name) if k in table), None)


def builtin_templates(name: str) -> list[str]:
  """CLIP_benchmark's zero-shot templates of a set (`{c}` is the class name); ImageNet-1k's when
  the set has none of its own."""
  table = _metadata()['templates']
  return list(next((table[k] for k in _keys(name) if k in table), table[DEFAULT_TEMPLATES]))


def has_own_templates(name: str) -> bool:
  """Whether CLIP_benchmark lists templates for the set itself (not the ImageNet fallback)."""
  return any(k in _metadata()['templates'] for k in _keys(name))


def known_names() -> set[str]:
  """Every set name the metadata or the named lists mention."""
  meta = _metadata()
  names = set(meta['classnames']) | set(meta['templates']) | set(RETRIEVAL_SETS)
  for members in meta['collections'].values():
    names.update(members)
  return names


def default_task(name: str) -> str:
  """'retrieval' or 'classification', as CLIP_benchmark's default task for the name."""
  return 'retrieval' if _keys(name)[-1] in RETRIEVAL_SETS else 'classification'


def collections() -> dict[str, list[str]]:
  """CLIP_benchmark's named lists: vtab, vtab+, imagenet_robustness, retrieval."""
  return {k: list(v) for k, v in _metadata()['collections'].items()}


def imagenet_wnids() -> list[str]:
  """ImageNet-1k's WordNet ids in label order (tfds imagenet2012's label names)."""
  return list(_metadata()['imagenet1k_wnids'])


def tfds_benchmark_name(tfds_name: str) -> str | None:
  """CLIP_benchmark's name for a tfds dataset name (without config or version), or None."""
  return TFDS_NAMES.get(tfds_name.split('/')[0].split(':')[0])


def parse_benchmarks(spec: str, read_text=None) -> list[str]:
  """Names from `a,b,c`, a built-in list name, or a file of names (one a line, `#` comments);
  lists expand in place; duplicates dropped, order kept."""
  lists = collections()
  if read_text is not None:
    text = read_text(spec)
    items = [line.split('#')[0].strip() for line in text.splitlines()]
  else:
    items = [part.strip() for part in spec.split(',')]
  names = []
  for item in filter(None, items):
    for name in lists.get(item, [item]):
      if name not in names:
        names.append(name)
  if not names:
    raise ConfigError(f'--benchmarks {spec!r} names no dataset')
  return names

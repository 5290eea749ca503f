"""Prompt templates for zero-shot classification; `{c}` is replaced by the class name."""

import os

from pretrain.errors import ConfigError

TEMPLATE_SETS = {
    'classname': ('{c}',),
    'short': ('a photo of a {c}.', 'a picture of a {c}.', 'an image of a {c}.', 'itap of a {c}.'),
    # The embedded shapes corpus (its captions use these phrasings).
    'shapes': ('a photo of a {c}', 'a {c}', 'a picture of a {c}', 'a drawing of a {c}'),
}


def load_templates(name_or_path: str) -> list[str]:
  """A built-in set by name, or a file with one template per line using `{c}`."""
  if name_or_path in TEMPLATE_SETS:
    return list(TEMPLATE_SETS[name_or_path])
  if os.path.isfile(name_or_path):
    with open(name_or_path) as f:
      templates = [line.strip() for line in f if line.strip()]
    bad = [t for t in templates if '{c}' not in t]
    if bad or not templates:
      raise ConfigError(f'template file {name_or_path}: every line needs {{c}} (bad: {bad[:1]})')
    return templates
  raise ConfigError(f'unknown templates {name_or_path!r}: not a file, nor one of '
                    f'{", ".join(sorted(TEMPLATE_SETS))}')

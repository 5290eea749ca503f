"""Data sources named by spec strings (`KIND:ARG`), each a random-access sequence of records.

A record is a dict with `image` (uint8 array or PIL image), `key` (str, for error messages), and
`caption` (training), `captions` (retrieval) or `label` (classification). Sources that know their
classes expose `classnames`.
"""

from pretrain.errors import ConfigError

SOURCE_KINDS = ('shapes',)


def open_source(spec: str, image_size: int = 64, seed: int = 0):
  """Opens the source a spec names, e.g. `shapes:train`."""
  kind, _, arg = spec.partition(':')
  if kind == 'shapes':
    from data.shapes import SPLITS, ShapesSource
    split = arg or 'train'
    if split not in SPLITS:
      raise ConfigError(f'data spec {spec!r}: unknown shapes split {split!r}; known: '
                        f'{", ".join(SPLITS)}')
    return ShapesSource(split, image_size=image_size, seed=seed)
  raise ConfigError(f'unknown data kind {kind!r} in spec {spec!r}; known: {", ".join(SOURCE_KINDS)}')


def check_spec(spec: str) -> None:
  """Raises ConfigError for a spec that names no known kind, without opening it."""
  kind = spec.partition(':')[0]
  if kind not in SOURCE_KINDS:
    raise ConfigError(f'unknown data kind {kind!r} in spec {spec!r}; known: {", ".join(SOURCE_KINDS)}')

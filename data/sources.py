"""Data sources named by spec strings, each a random-access sequence of decoded records.

  shapes:SPLIT                     the embedded corpus (train, zeroshot, retrieval)
  csv:PATH[?sep=tab&image_key=filepath&caption_key=title]
  wds:PATTERN[?index_dir=DIR]      tar shards: brace ranges {000..099} and globs
  imagefolder:DIR                  DIR/<class>/<image>
  jsonl:PATH
  tfds:NAME[:SPLIT][?data_dir=DIR&image_key=image&caption_key=caption&label_key=label]
  arrayrecord:DIR|PATTERN          ArrayRecord files written by `python -m data.convert`
  W1*SPEC1;W2*SPEC2                a weighted mixture, e.g. 0.7*csv:a.csv;0.3*wds:b/{0..9}.tar
A record is a dict with `image` (RGB PIL image or uint8 array), `key`, and `caption`, `captions`
and/or `label`; a broken record raises data.records.BadRecord. Sources expose `name`, `text(i)`
(captions without the image), `classnames` when they have classes, and `problems` (bad shards).
Every PATH may be local or a gs:// / s3:// URL, except a tfds: data_dir (local only).
shapes:SPLIT?size=N is the split's first N records (rendered on demand, so any N).
"""

from urllib.parse import parse_qsl

from data import storage
from data.records import DEFAULT_MAX_PIXELS
from data.errors import ConfigError

SOURCE_KINDS = ('shapes', 'csv', 'wds', 'imagefolder', 'jsonl', 'tfds', 'arrayrecord')


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
  """'kind:arg?k=v&k2=v2' -> (kind, arg, options)."""
  head, _, query = spec.partition('?')
  kind, _, arg = head.partition(':')
  return kind, arg, dict(parse_qsl(query, keep_blank_values=True))


def mixture_parts(spec: str) -> list[tuple[float, str]]:
  """[(weight, spec)] of a mixture spec; a plain spec is one part of weight 1."""
  parts = []
  for part in (p.strip() for p in spec.split(';') if p.strip()):
    weight, star, rest = part.partition('*')
    try:
      parts.append((float(weight), rest) if star else (1.0, part))
    except ValueError:
      parts.append((1.0, part))
  return parts


def check_spec(spec: str) -> None:
  """Raises ConfigError for an unknown kind, without opening anything."""
  for _, part in mixture_parts(spec):
    kind = parse_spec(part)[0]
    if kind not in SOURCE_KINDS:
      raise ConfigError(f'unknown data kind {kind!r} in spec {part!r}; known: '
                        f'{", ".join(SOURCE_KINDS)}')


def _open_one(spec: str, image_size: int, seed: int, cache_dir: str | None, max_pixels: int,
              index_dir: str | None = None):
  kind, arg, options = parse_spec(spec)
  if kind == 'shapes':
    from data.shapes import SPLITS, ShapesSource
    split = arg or 'train'
    if split not in SPLITS:
      raise ConfigError(f'data spec {spec!r}: unknown shapes split {split!r}; known: '
                        f'{", ".join(SPLITS)}')
    return ShapesSource(split, image_size=image_size, seed=seed, size=_shapes_size(spec, options))
  if not arg:
    raise ConfigError(f'data spec {spec!r} needs a path: {kind}:PATH')
  try:
    if kind == 'csv':
      from data.file_sources import CsvSource
      return CsvSource(arg, max_pixels=max_pixels, **options)
    if kind == 'jsonl':
      from data.file_sources import JsonlSource
      return JsonlSource(arg, max_pixels=max_pixels, **options)
    if kind == 'imagefolder':
      from data.file_sources import ImageFolderSource
      return ImageFolderSource(arg, max_pixels=max_pixels, **options)
    if kind == 'wds':
      from data.wds import WdsSource
      return WdsSource(arg, cache_dir=cache_dir, max_pixels=max_pixels,
                       index_dir=options.pop('index_dir', index_dir) or None, **options)
    if kind == 'arrayrecord':
      from data.arrayrecord_source import ArrayRecordSource
      return ArrayRecordSource(arg, max_pixels=max_pixels, **options)
    if kind == 'tfds':
      from data.tfds_source import TfdsSource
      name, _, split = arg.partition(':')
      return TfdsSource(name, split or 'train', **options)
  except TypeError as e:  # An option the source does not take.
    raise ConfigError(f'data spec {spec!r}: {e}') from None
  raise ConfigError(f'unknown data kind {kind!r} in spec {spec!r}; known: {", ".join(SOURCE_KINDS)}')


def open_source(spec: str, image_size: int = 64, seed: int = 0, cache_dir: str | None = None,
                max_pixels: int = DEFAULT_MAX_PIXELS, index_dir: str | None = None):
  """Opens the source (or weighted mixture) a spec names.

  wds: shard indexes are read from `index_dir` (else beside the shards, else `cache_dir`) and
  missing ones written to `index_dir` (else `cache_dir`).
  """
  check_spec(spec)
  parts = mixture_parts(spec)
  sources = [_open_one(s, image_size, seed, cache_dir, max_pixels, index_dir) for _, s in parts]
  if len(sources) == 1:
    return sources[0]
  from data.mixture import MixtureSource
  return MixtureSource(sources, [w for w, _ in parts])


def index_cache_dir(workdir: str) -> str:
  """Where a run keeps its shard indexes: beside the run, in its bucket when the workdir is one."""
  return storage.join(workdir, 'data_index')


def _shapes_size(spec: str, options: dict[str, str]) -> int | None:
  """The `size` option of a shapes spec (None: the split's own size)."""
  if 'size' not in options:
    return None
  text = options['size']
  if not text.isdigit() or int(text) < 1:
    raise ConfigError(f'data spec {spec!r}: size must be a whole number >= 1, not {text!r}')
  return int(text)

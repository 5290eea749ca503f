"""The class names a zero-shot job scores against: the set's own, or `--classnames FILE` checked
against them. A tfds ImageNet set (imagenet2012, imagenet_v2, imagenet_sketch), whose own label
names are WordNet ids, gets CLIP's curated names instead (CLIP_benchmark's, eval.benchmark_meta).

A file renames the classes in label order, one per label. When the set's labels have names of
their own (folder names, tfds label names, the shapes corpus) and the file uses some of them on
other lines, the file is mapped by name if it lists every class exactly once, and refused
otherwise: a permuted list read by position would silently permute every label.
"""

from data import storage
from data.errors import ConfigError
from data.sources import parse_spec
from eval import benchmark_meta


def read_classnames(path: str) -> list[str]:
  """One class name per line; the file may be in a bucket."""
  storage.check_reachable(path, '--classnames')
  try:
    text = storage.read_text(path)
  except OSError as e:
    raise ConfigError(f'--classnames {path}: {e.strerror or "No such file or directory"}') from None
  return [line.strip() for line in text.splitlines() if line.strip()]


def _key(name: str) -> str:
  return ' '.join(name.replace('_', ' ').split()).casefold()


def _own_keys(source) -> list[set[str]]:
  """Per label, the names that identify it: its class name and (imagefolder) its folder name."""
  own = list(source.classnames)
  folders = list(getattr(source, 'label_names', None) or own)
  return [{_key(a), _key(b)} for a, b in zip(own, folders)]


def _by_name(names: list[str], source, path: str, spec: str) -> list[str]:
  """`names` in label order when the file contradicts the positions; itself when it does not."""
  owners: dict[str, set[int]] = {}
  for label, keys in enumerate(_own_keys(source)):
    for key in keys:
      owners.setdefault(key, set()).add(label)
  found = [owners.get(_key(n), set()) for n in names]
  moved = [(line, n, min(f)) for line, (n, f) in enumerate(zip(names, found))
           if f and line not in f]
  if not moved:
    return names  # a renaming: no name sits on another class's line
  labels = [min(f) if len(f) == 1 else -1 for f in found]
  if sorted(labels) == list(range(len(names))):
    ordered = [''] * len(names)
    for name, label in zip(names, labels):
      ordered[label] = name
    return ordered
  line, name, label = moved[0]
  raise ConfigError(
      f'--classnames {path} has {name!r} on line {line + 1}, but it is class {label} of {spec} '
      f'(label order: {", ".join(source.classnames[:4])}, ...); list every class name once to '
      'map by name, or rename the classes in label order')


def builtin_names(source, spec: str) -> list[str] | None:
  """CLIP_benchmark's names for a tfds set whose labels are ImageNet's WordNet ids, in its order."""
  kind, arg, _ = parse_spec(spec)
  name = benchmark_meta.tfds_benchmark_name(arg) if kind == 'tfds' else None
  names = benchmark_meta.builtin_classnames(name) if name else None
  if names and list(getattr(source, 'classnames', None) or []) == benchmark_meta.imagenet_wnids():
    return names
  return None


def resolve_classnames(source, spec: str, path: str | None) -> list[str]:
  """The names of the labels 0..C-1 of `source`, from `path` if given; ConfigError when they
  cannot be matched to the labels."""
  own = list(getattr(source, 'classnames', None) or [])
  if path is None:
    builtin = builtin_names(source, spec)
    if builtin:
      return builtin
    if not own:
      raise ConfigError(f'{spec} has no class names: pass --classnames FILE')
    return own
  names = read_classnames(path)
  if not names:
    raise ConfigError(f'--classnames {path} has no names')
  if not own:
    return names  # checked against the labels when they are read (zeroshot_lib)
  if len(names) != len(own):
    raise ConfigError(f'--classnames {path} has {len(names)} names for the {len(own)} classes of '
                      f'{spec}; give one name per class, in label order')
  return _by_name(names, source, path, spec)

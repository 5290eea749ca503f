"""What produced an eval result, and the short hash of it that names the result's folder.

Two jobs share a results folder only when they evaluate the same data (spec with its paths made
absolute, record count, and the bytes of a CSV/JSONL file) with the same class names, templates,
input sizes and image transform; so `--watch` never takes one setting's result for another's.
"""

import hashlib
import json

from data import storage
from data.sources import mixture_parts, parse_spec

FILE_KINDS = ('csv', 'jsonl', 'imagefolder', 'wds')
# data.transforms.eval_transform, then the model's on-device normalisation.
EVAL_TRANSFORM = 'resize shorter side to image_size, centre crop, (x/255 - mean) / std'


def _digest(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()[:16]


def _file_digest(path: str) -> str:
  h = hashlib.sha256()
  with storage.open_reader(path) as f:  # in a bucket: 1 MiB ranged reads, not one download
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()[:16]


def _is_file(path: str) -> bool:
  """Whether a local path or a bucket object is a file (other URL schemes are not read)."""
  return (storage.is_bucket(path) or not storage.scheme(path)) and storage.is_file(path)


def _resolve_part(spec: str) -> dict:
  """One source of a spec: kind, absolute path, options; the file's digest for csv/jsonl."""
  kind, arg, options = parse_spec(spec)
  if kind in FILE_KINDS and arg and '://' not in arg and not arg.startswith('pipe:'):
    arg = storage.absolute(arg)
  if 'data_dir' in options:
    options['data_dir'] = storage.absolute(options['data_dir'])
  part = {'kind': kind, 'arg': arg, 'options': dict(sorted(options.items()))}
  if kind in ('csv', 'jsonl') and _is_file(arg):
    part['sha256'] = _file_digest(arg)
  return part


def dataset_identity(spec: str, source) -> dict:
  """The data a result was computed on, independent of the directory the job ran from."""
  parts = [{'weight': w, **_resolve_part(p)} for w, p in mixture_parts(spec)]
  return {'parts': parts, 'records': len(source)}


def names_digest(names: list[str]) -> dict:
  """Count and hash of a list of strings (class names, templates)."""
  return {'count': len(names), 'sha256': _digest('\n'.join(names).encode('utf-8'))}


def eval_settings(spec: str, source, model_config, classnames: list[str] | None = None,
                  templates: list[str] | None = None) -> dict:
  """Everything that decides an eval job's numbers, apart from the checkpoint (not how it was
  typed: `csv:a.csv` from /data and `csv:/data/a.csv` are one setting)."""
  settings = {
      'dataset': dataset_identity(spec, source),
      'dims': {'image_size': int(model_config.image_size),
               'context_length': int(model_config.context_length)},
      'image_transform': {'eval': EVAL_TRANSFORM, 'image_size': int(model_config.image_size),
                          'mean': [float(v) for v in model_config.image_mean],
                          'std': [float(v) for v in model_config.image_std]},
  }
  if classnames is not None:
    settings['classnames'] = names_digest(classnames)
  if templates is not None:
    settings['templates'] = names_digest(templates)
  return settings


def settings_hash(settings: dict) -> str:
  """8 hex digits of the settings."""
  return _digest(json.dumps(settings, sort_keys=True).encode('utf-8'))[:8]

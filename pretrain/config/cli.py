"""`--config PATH[:ARG] --workdir DIR --config.FIELD=VALUE ...`, with one-line errors.

Config files are Python files defining `get_config(arg)` that returns an ml_collections ConfigDict
(big_vision's convention). Overrides are typed by the field's current value; an unknown field is an
error that suggests the nearest existing names.
"""

import ast
import difflib
import importlib.util
import json
import os
import sys
from typing import Any

import ml_collections

from data import storage
from data.errors import ConfigError


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Runs `get_config(arg)` of the file in `PATH[:ARG]`."""
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise ConfigError(f'config file {path} does not exist')
  module_spec = importlib.util.spec_from_file_location(f'_config_{abs(hash(path))}', path)
  module = importlib.util.module_from_spec(module_spec)
  # Config files import `configs.common`: make the repository root importable from anywhere.
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if root not in sys.path:
    sys.path.insert(0, root)
  module_spec.loader.exec_module(module)
  if not hasattr(module, 'get_config'):
    raise ConfigError(f'config file {path} defines no get_config(arg)')
  try:
    return module.get_config(arg or None)
  except (ValueError, KeyError) as e:
    raise ConfigError(f'{spec}: {e}') from None


def _all_fields(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  names = []
  for key, value in config.items():
    names.append(prefix + key)
    if isinstance(value, ml_collections.ConfigDict):
      names.extend(_all_fields(value, prefix + key + '.'))
  return names


def _parse_value(text: str, current: Any, field: str) -> Any:
  if isinstance(current, bool):
    if text.lower() in ('true', '1', 'yes'):
      return True
    if text.lower() in ('false', '0', 'no'):
      return False
    raise ConfigError(f'--config.{field}={text}: expected true or false')
  if isinstance(current, str):
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if current is None:
      return text
    if isinstance(current, (tuple, list)):  # --config.freeze=img/.*,txt/proj/.* : strings
      return type(current)(part for part in text.split(',') if part)
    raise ConfigError(f'--config.{field}={text}: expected a {type(current).__name__}') from None
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if current is not None and not isinstance(value, type(current)):
    if isinstance(current, (tuple, list)) and isinstance(value, (tuple, list)):
      return type(current)(value)
    raise ConfigError(f'--config.{field}={text}: expected a {type(current).__name__}, '
                      f'got {type(value).__name__}')
  return value


def apply_override(config: ml_collections.ConfigDict, field: str, text: str) -> None:
  """Sets `config.<field>` from its command-line text."""
  *parents, leaf = field.split('.')
  node = config
  for name in parents:
    node = node.get(name) if isinstance(node, ml_collections.ConfigDict) else None
  if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
    close = difflib.get_close_matches(field, _all_fields(config), n=3)
    hint = f'; did you mean {", ".join(close)}?' if close else ''
    raise ConfigError(f'unknown config field --config.{field}{hint}')
  current = node[leaf]
  if isinstance(current, ml_collections.ConfigDict):
    raise ConfigError(f'--config.{field} is a group; set one of its fields instead')
  with node.unlocked():
    node[leaf] = _parse_value(text, current, field)


FIELDS_HELP = ('Every config field, with its meaning and default: configs/common.py; a config file '
               'sets its own values (e.g. configs/demo.py).')


def parse_args(argv: list[str], required: tuple[str, ...] = ('config', 'workdir'),
               optional: tuple[str, ...] = (), usage: str = '', switches: tuple[str, ...] = ()
               ) -> tuple[ml_collections.ConfigDict, dict[str, str]]:
  """-> (config with overrides applied, the other --flags as strings); any other flag is an error.

  `switches` take no value: present, they read 'true'.

  -h/--help prints `usage` (the entry point's docstring) and where the fields are documented, and
  exits 0.
  """
  if '-h' in argv or '--help' in argv:
    print(f'{usage.strip()}\n\n{FIELDS_HELP}')
    raise SystemExit(0)
  flags, overrides = {}, []
  args = list(argv)
  while args:
    arg = args.pop(0)
    if not arg.startswith('--'):
      raise ConfigError(f'unexpected argument {arg!r}')
    name, eq, value = arg[2:].partition('=')
    if name.startswith('config.'):
      if not eq:
        raise ConfigError(f'{arg}: write overrides as --{name}=VALUE')
      overrides.append((name[len('config.'):], value))
      continue
    if not eq and name in switches:
      value = 'true'
    elif not eq:
      if not args or args[0].startswith('--'):
        raise ConfigError(f'--{name} needs a value')
      value = args.pop(0)
    flags[name] = value
  for name in required:
    if name not in flags:
      raise ConfigError(f'--{name} is required')
  unknown = sorted(set(flags) - set(required) - set(optional) - set(switches))
  if unknown:
    raise ConfigError(f'unknown flag --{unknown[0]}; expected '
                      + ', '.join(f'--{name}' for name in required + optional + switches)
                      + ', --config.FIELD=VALUE')
  config = load_config_file(flags['config'])
  for field, value in overrides:
    apply_override(config, field, value)
  config.lock()
  return config, flags


def save_config(config: ml_collections.ConfigDict, path: str) -> None:
  """Writes the resolved config as JSON (atomically)."""
  storage.write_text(path, config.to_json(indent=2, sort_keys=True))


def load_saved_config(path: str) -> ml_collections.ConfigDict:
  """Reads a run's config.json back into a ConfigDict."""
  if not storage.is_file(path):
    raise ConfigError(f'{path} does not exist: is its folder the workdir of a training run?')
  saved = json.loads(storage.read_text(path))
  # Fields added since the run was written take their defaults, so older workdirs still load.
  from configs.common import base_config
  return ml_collections.ConfigDict(_with_defaults(saved, base_config().to_dict()))


def _with_defaults(saved: dict, defaults: dict) -> dict:
  """`saved`, plus every field of `defaults` it lacks (recursively)."""
  merged = dict(saved)
  for key, value in defaults.items():
    if key not in merged:
      merged[key] = value
    elif isinstance(value, dict) and isinstance(merged[key], dict):
      merged[key] = _with_defaults(merged[key], value)
  return merged

"""What both converters share: safetensors I/O, the tensor layout rules, and the block mapping.

A mapping is a list of `Rule(ours, theirs, kind)`: `ours` a '/'-joined path in our parameter tree,
`theirs` one or more keys of the other library's state dict, `kind` how the layouts differ. Import
applies `to_ours`, export `to_theirs`, so each convention is written once.
"""

import dataclasses
import os

import ml_dtypes
import numpy as np

from data import storage
from data.errors import ConfigError

PICKLE_SUFFIXES = ('.bin', '.pt', '.pth', '.ckpt', '.pkl', '.pickle')
# Buffers some versions save that carry no weights.
IGNORED_KEYS = ('attn_mask', 'text_model.embeddings.position_ids',
                'vision_model.embeddings.position_ids')


SAFETENSORS_DTYPES = {'F64': np.float64, 'F32': np.float32, 'F16': np.float16,
                      'BF16': ml_dtypes.bfloat16, 'I64': np.int64, 'I32': np.int32,
                      'I16': np.int16, 'I8': np.int8, 'U8': np.uint8, 'BOOL': np.bool_}

# A torch pickle starts with the pickle protocol opcode; torch.save's default zip format with 'PK'.
PICKLE_MAGIC = (b'\x80', b'PK\x03\x04')


def _pickle_message(path: str) -> str:
  return (f'{path} is a torch pickle, and loading a pickle runs arbitrary code: convert it once '
          "where you trust it: python -c \"import torch, safetensors.torch as st; "
          f"st.save_file(torch.load('{path}', weights_only=True), '{os.path.splitext(path)[0]}"
          ".safetensors')\" (for a full OpenCLIP checkpoint take its 'state_dict')")


def check_weights_file(path: str) -> None:
  """One-line ConfigError unless `path` (local or in a bucket) is a safetensors file (by its name
  and its first bytes)."""
  if path.endswith(PICKLE_SUFFIXES):
    raise ConfigError(_pickle_message(path))
  storage.check_reachable(path, 'weights file')
  if not storage.is_file(path):
    raise ConfigError(f'weights file {path} does not exist')
  with storage.open_reader(path) as f:  # in a bucket: two small reads, not the whole file
    head = f.read(9)
    size = f.seek(0, os.SEEK_END)
  # safetensors: an 8-byte little-endian header length, then the JSON header. Tested first: a
  # length's first byte may equal a pickle's opcode.
  header_len = int.from_bytes(head[:8], 'little') if len(head) == 9 else 0
  if head[8:9] == b'{' and 8 + header_len <= size:
    return
  if head.startswith(PICKLE_MAGIC):
    raise ConfigError(_pickle_message(path))
  raise ConfigError(f'{path} is not a safetensors file (it does not start with a safetensors '
                    'header); only .safetensors weights are read')


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """Every tensor of a .safetensors file as fp32 numpy; refuses torch pickles in one line."""
  check_weights_file(path)
  try:
    if storage.is_bucket(path):
      tensors = _tensors_from_bytes(storage.read_bytes(path))
    else:
      from safetensors.flax import load_file  # jax arrays: bf16 files load too
      tensors = load_file(path)
  except Exception as e:  # safetensors raises its own error types for a malformed header.
    raise ConfigError(f'{path} is not a readable safetensors file ({e})') from None
  return {name: np.asarray(t.astype(np.float32)) for name, t in tensors.items()}


def _tensors_from_bytes(data: bytes) -> dict[str, np.ndarray]:
  """A whole safetensors file's tensors (a bucket object has no file to map); bf16 through
  ml_dtypes, as jax has it (safetensors' own numpy loader has no bf16)."""
  from safetensors import deserialize
  tensors = {}
  for name, info in deserialize(data):
    dtype = SAFETENSORS_DTYPES.get(info['dtype'])
    if dtype is None:
      raise ValueError(f'tensor {name} has dtype {info["dtype"]}')
    tensors[name] = np.frombuffer(info['data'], dtype).reshape(info['shape'])
  return tensors


def write_safetensors(tensors: dict[str, np.ndarray], path: str) -> None:
  """Writes fp32 contiguous tensors with the metadata torch-side loaders expect (to a local
  file or a bucket object, whole)."""
  from safetensors.numpy import save
  # .copy(order='C'), not ascontiguousarray: that turns 0-d tensors (logit_scale) into shape (1,).
  storage.write_bytes(path, save({k: np.asarray(v, np.float32).copy(order='C')
                                  for k, v in tensors.items()}, metadata={'format': 'pt'}))


@dataclasses.dataclass(frozen=True)
class Rule:
  ours: str
  theirs: tuple[str, ...]
  kind: str  # copy | linear | patch | cls | qkv | qkv_bias


def to_ours(kind: str, arrays: list[np.ndarray]) -> np.ndarray:
  """Their tensor(s) -> our leaf."""
  if kind == 'copy':
    return arrays[0]
  if kind == 'linear':  # torch Linear weights are (out, in); our kernels (in, out).
    return arrays[0].T
  if kind == 'patch':  # conv (out, in, kh, kw) -> our (kh*kw*in, out), patches flattened (r, c, ch).
    w = arrays[0]
    return w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0])
  if kind == 'cls':
    return arrays[0].reshape(1, 1, -1)
  if kind == 'qkv':  # HF's separate q, k, v Linears -> our fused (in, 3 * out), q first.
    return np.concatenate(arrays, axis=0).T
  if kind == 'qkv_bias':
    return np.concatenate(arrays, axis=0)
  raise ValueError(kind)


def to_theirs(kind: str, leaf: np.ndarray, patch: int = 0) -> list[np.ndarray]:
  """Our leaf -> their tensor(s); the inverse of `to_ours`."""
  if kind == 'copy':
    return [leaf]
  if kind == 'linear':
    return [leaf.T]
  if kind == 'patch':
    return [leaf.reshape(patch, patch, 3, -1).transpose(3, 2, 0, 1)]
  if kind == 'cls':
    return [leaf.reshape(-1)]
  if kind == 'qkv':
    return list(np.split(leaf.T, 3, axis=0))
  if kind == 'qkv_bias':
    return list(np.split(leaf, 3, axis=0))
  raise ValueError(kind)


def layer_norm_rules(ours: str, theirs: str) -> list[Rule]:
  """LayerNorm: torch 'weight' is our 'scale'."""
  return [Rule(f'{ours}/scale', (f'{theirs}.weight',), 'copy'),
          Rule(f'{ours}/bias', (f'{theirs}.bias',), 'copy')]


def linear_rules(ours: str, theirs: str) -> list[Rule]:
  """A torch Linear with bias."""
  return [Rule(f'{ours}/kernel', (f'{theirs}.weight',), 'linear'),
          Rule(f'{ours}/bias', (f'{theirs}.bias',), 'copy')]


def apply_import(rules: list[Rule], tensors: dict[str, np.ndarray], shapes: dict[str, tuple],
                 source: str) -> dict[str, np.ndarray]:
  """Our flat parameters from their tensors; every shape checked, no tensor left unused."""
  flat, used = {}, set()
  for rule in rules:
    missing = [key for key in rule.theirs if key not in tensors]
    if missing:
      raise ConfigError(f'{source} has no tensor {missing[0]} (needed for {rule.ours}): '
                        'does --arch describe these weights?')
    value = to_ours(rule.kind, [tensors[key] for key in rule.theirs])
    if value.shape != shapes[rule.ours]:
      raise ConfigError(f'{source}: {", ".join(rule.theirs)} makes {rule.ours} of shape '
                        f'{value.shape}, but --arch gives {shapes[rule.ours]}')
    flat[rule.ours] = value
    used.update(rule.theirs)
  unused = sorted(set(tensors) - used - set(IGNORED_KEYS))
  if unused:
    raise ConfigError(f'{source} has {len(unused)} tensors this architecture does not use '
                      f'(first: {unused[0]}): is --arch the config these weights were saved with?')
  return flat


def apply_export(rules: list[Rule], flat: dict[str, np.ndarray], patch: int) -> dict[str, np.ndarray]:
  """Their state dict from our flat parameters."""
  tensors = {}
  for rule in rules:
    for key, value in zip(rule.theirs, to_theirs(rule.kind, flat[rule.ours], patch)):
      tensors[key] = value
  return tensors

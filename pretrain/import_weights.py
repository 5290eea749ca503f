"""Imports OpenCLIP or Hugging Face CLIP weights into a workdir that eval jobs and training use.

  python -m pretrain.import_weights --from openclip|hf --weights FILE.safetensors \
      --arch CONFIG.json --workdir DIR [--tokenizer SPEC]

The workdir is laid out like a training run's: `config.json`, the tokenizer, and an orbax checkpoint
(step 0, parameters only), plus `imported.json` saying where the weights came from. Then
`python -m eval.zeroshot --workdir DIR ...` evaluates it and `--config.init_from=DIR` starts training
from it. Only safetensors are read: torch pickles are refused (loading one runs arbitrary code).
Inputs may be local, gs:// or s3://; the workdir local or gs:// (orbax writes no s3:// checkpoints).
"""

import argparse
import hashlib
import json
import sys

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from data import storage
from data.tokenizer import get_tokenizer, save_to_workdir
from pretrain.runtime.checkpoint import check_checkpoint_location, checkpoint_dir
from pretrain.config import validate
from pretrain.models.param_paths import from_named, named_leaves
from pretrain.config.cli import save_config
from data.errors import ConfigError, require
from pretrain.interop import hf, openclip
from pretrain.interop.common import apply_import, check_weights_file, read_safetensors
from pretrain.step.train_step import model_graphdef_and_shapes

FAMILIES = {'openclip': openclip, 'hf': hf}


def _read_json(path: str) -> dict:
  storage.check_reachable(path, 'architecture file')
  require(storage.is_file(path), f'architecture file {path} does not exist')
  try:
    return json.loads(storage.read_text(path))
  except json.JSONDecodeError as e:
    raise ConfigError(f'{path} is not valid JSON ({e})') from None


def source_config(source: str, arch_path: str):
  """Our config for the source's architecture JSON (HF: with a preprocessor_config.json beside it);
  every field it reads is checked, and an error names the file and the field."""
  arch = _read_json(arch_path)
  try:
    if source == 'openclip':
      return openclip.config_from_arch(arch)
    beside = _beside(arch_path, 'preprocessor_config.json')
    preprocessor = _read_json(beside) if storage.is_file(beside) else None
    require(preprocessor is None or isinstance(preprocessor, dict),
            f'{beside} does not hold a JSON object')
    return hf.config_from_arch(arch, preprocessor)
  except ConfigError as e:
    raise ConfigError(f'{arch_path}: {e}') from None


def _beside(path: str, name: str) -> str:
  """The file `name` in the folder holding `path` (made absolute when local)."""
  return storage.join(storage.parent(storage.absolute(path)), name)


def default_tokenizer(source: str, arch_path: str) -> str:
  """The tokenizer.json beside the architecture file (HF's, or one of our OpenCLIP exports);
  else the user must name one."""
  beside = _beside(arch_path, 'tokenizer.json')
  if storage.is_file(beside):
    return f'hf:{beside}'
  raise ConfigError('--tokenizer is required here: clip_bpe:PATH/bpe_simple_vocab_16e6.txt.gz '
                    '(it ships inside the open_clip_torch package) or hf:PATH/tokenizer.json')


def imported_params(source: str, config, weights: str) -> dict:
  """Our parameter tree (numpy leaves) from the source's safetensors, every shape checked."""
  _, shapes = model_graphdef_and_shapes(config)
  flat_shapes = {name: tuple(leaf.shape) for name, leaf in named_leaves(shapes).items()}
  flat = apply_import(FAMILIES[source].rules(config), read_safetensors(weights), flat_shapes,
                      weights)
  # CLIP's patch embedding is a bias-free conv; ours has a bias, imported as zero.
  flat['img/patch_embed/bias'] = np.zeros(flat_shapes['img/patch_embed/bias'], np.float32)
  missing = sorted(set(flat_shapes) - set(flat))
  require(not missing, f'no source tensor maps to {missing[0] if missing else ""}')
  return from_named(flat, shapes)


def write_workdir(workdir: str, config, params: dict, provenance: dict) -> None:
  """config.json, the tokenizer, checkpoint 0 (parameters only) and imported.json."""
  validate.check_workdir(workdir)
  directory = checkpoint_dir(workdir)
  require(not (storage.is_dir(directory) and storage.listdir(directory)),
          f'{workdir} already has checkpoints; import into a new workdir')
  config.lock()
  save_config(config, storage.join(workdir, 'config.json'))
  save_to_workdir(config.data.tokenizer, workdir)
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=True))
  manager.save(0, args=ocp.args.Composite(params=ocp.args.StandardSave(_to_jax(params))),
               force=True)
  manager.wait_until_finished()
  manager.close()
  storage.write_text(storage.join(workdir, 'imported.json'), json.dumps(provenance, indent=2))


def _to_jax(tree):
  return {k: _to_jax(v) if isinstance(v, dict) else jnp.asarray(v) for k, v in tree.items()}


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with storage.open_reader(path) as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def import_weights(source: str, weights: str, arch_path: str, workdir: str,
                   tokenizer: str | None = None):
  """Converts and writes; returns our config of the imported model."""
  require(source in FAMILIES, f'--from {source!r}: expected one of {", ".join(FAMILIES)}')
  check_weights_file(weights)  # First: a pickle is refused before anything else is read.
  config = source_config(source, arch_path)
  config.data.tokenizer = tokenizer or default_tokenizer(source, arch_path)
  vocab = get_tokenizer(config.data.tokenizer, config.data.lowercase).vocab_size
  validate.check_vocab(vocab, config.model.vocab_size, config.data.tokenizer)
  validate.check_model(config.model)
  params = imported_params(source, config, weights)
  write_workdir(workdir, config, params, dict(
      source=source, weights=storage.absolute(weights), weights_sha256=_sha256(weights),
      arch=storage.absolute(arch_path), tokenizer=config.data.tokenizer))
  return config


def main(argv: list[str]) -> int:
  """Command-line entry point; bad input prints one line and exits 2."""
  parser = argparse.ArgumentParser(prog='python -m pretrain.import_weights')
  parser.add_argument('--from', dest='source', required=True, choices=sorted(FAMILIES))
  parser.add_argument('--weights', required=True, help='a .safetensors file')
  parser.add_argument('--arch', required=True,
                      help="OpenCLIP's model config (or open_clip_config.json), or HF's config.json")
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--tokenizer', help='clip_bpe:PATH or hf:PATH (default: the '
                      'tokenizer.json beside --arch)')
  args = parser.parse_args(argv)
  try:
    config = import_weights(args.source, args.weights, args.arch, args.workdir, args.tokenizer)
  except ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  size = dict(config.model.custom)
  print(f'imported {args.source} weights into {args.workdir}: ViT {size["image_width"]}x'
        f'{size["image_depth"]} patch {size["patch"]} at {config.model.image_size}px, text '
        f'{size["text_width"]}x{size["text_depth"]}, embedding {size["embed_dim"]}, '
        f'{config.model.activation}, text pooling {config.model.text_pool}', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))

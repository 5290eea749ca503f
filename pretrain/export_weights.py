"""Exports a run's checkpoint as OpenCLIP or Hugging Face CLIP weights.

  python -m pretrain.export_weights --workdir DIR [--step N] --to openclip|hf --out FOLDER

openclip: FOLDER/open_clip_model.safetensors, FOLDER/open_clip_config.json (load with
  `open_clip.create_model('local-dir:FOLDER')`) and FOLDER/exported.json (its model config:
  `open_clip.add_model_config('FOLDER/exported.json'); open_clip.create_model('exported',
  pretrained='FOLDER/open_clip_model.safetensors')`).
hf: FOLDER/model.safetensors, config.json, preprocessor_config.json
  (`transformers.CLIPModel.from_pretrained(FOLDER)`).
Both get the run's tokenizer as the library loads it (tokenizer.json with its special tokens,
tokenizer_config.json): `open_clip.get_tokenizer('local-dir:FOLDER')` and
`transformers.AutoTokenizer.from_pretrained(FOLDER)` give our ids (see pretrain/interop/
tokenizer_files.py). HF cannot pool at an end-of-text id 2: such a model's id 2 is exchanged with
the tokenizer's last id in the HF export (embedding rows and tokenizer alike). Files are written with
the usual modes (0644 under umask 022). The workdir may be local or gs://, FOLDER local, gs:// or
s3://. Models those libraries cannot express get a one-line reason.
"""

import argparse
import json
import os
import sys

import numpy as np

from data import storage
from data.tokenizer import Tokenizer
from pretrain.runtime.checkpoint import restore_params
from eval.run_model import RunModel
from pretrain.models.param_paths import named_leaves
from data.errors import ConfigError, require
from pretrain.interop import hf, openclip
from pretrain.interop.common import apply_export, write_safetensors
from pretrain.interop.tokenizer_files import (TOKENIZER_FILES, library_tokenizer,
                                              openclip_text_cfg, run_tokenizer_json,
                                              write_tokenizer)
from pretrain.models.variants import image_tower_kind, model_size


def check_expressible(config, target: str) -> None:
  """One-line ConfigError naming the part of our model `target` cannot express."""
  model, size = config.model, model_size(config.model)
  require(image_tower_kind(size) == 'vit', f'{target} CLIP cannot express an EfficientNet image '
          f'tower (variant {model.variant!r}); only ViT towers export')
  require(model.image_pool == 'cls', f'{target} CLIP pools images at a class token; this model '
          f'uses model.image_pool={model.image_pool!r}')
  require(model.text_causal and model.text_pool != 'cls',
          f'{target} CLIP has a causal text tower pooled at end-of-text; this model has '
          f'text_causal={model.text_causal}, text_pool={model.text_pool!r}')
  if target == 'hf':
    require(model.image_ln_pre, 'HF CLIP always applies a LayerNorm before the vision encoder '
            '(pre_layrnorm); this model has none (model.image_ln_pre=False): export --to openclip')
    require(config.loss.name != 'sigmoid', 'HF CLIPModel has no logit bias; this model was '
            'trained with the sigmoid loss: export --to openclip')


def end_of_text_id(config, tokenizer: Tokenizer) -> int:
  """The id whose first occurrence marks where the text is pooled ('eot': the tokenizer's)."""
  return config.model.text_eos_id if config.model.text_pool == 'eos_id' else tokenizer.eos_id


def openclip_files(config, flat: dict, tokenizer: Tokenizer) -> tuple[dict, dict]:
  """(state dict, open_clip_config.json contents)."""
  if config.model.text_pool == 'argmax':
    arch = openclip.arch_from_config(config, 'argmax', -1)
  else:
    arch = openclip.arch_from_config(config, 'eos', end_of_text_id(config, tokenizer))
  return apply_export(openclip.rules(config), flat, model_size(config.model)['patch']), arch


def hf_eos_swap(config, tokenizer: Tokenizer) -> tuple[int, int] | None:
  """HF pools at the highest id when eos_token_id is 2, so a model pooling at end-of-text id 2
  (every built-in tokenizer's) is exported with that id exchanged for the tokenizer's last one:
  token embedding rows and tokenizer alike, which leaves every embedding unchanged."""
  if config.model.text_pool == 'argmax' or end_of_text_id(config, tokenizer) != hf.LEGACY_EOS:
    return None
  last = tokenizer.vocab_size - 1
  require(last > hf.LEGACY_EOS, f'the tokenizer has {tokenizer.vocab_size} ids: too few to move '
          'end-of-text id 2 for HF; export --to openclip')
  return hf.LEGACY_EOS, last


def hf_files(config, flat: dict, tokenizer: Tokenizer,
             swap: tuple[int, int] | None = None) -> tuple[dict, dict, dict]:
  """(state dict, config.json, preprocessor_config.json contents); `swap`: see `hf_eos_swap`."""
  remap = (lambda i: {swap[0]: swap[1], swap[1]: swap[0]}.get(i, i)) if swap else (lambda i: i)
  if config.model.text_pool == 'argmax':
    eos = hf.LEGACY_EOS  # HF pools at the highest id exactly when eos_token_id is 2.
  else:
    eos = remap(end_of_text_id(config, tokenizer))
    require(eos != hf.LEGACY_EOS, 'HF CLIP pools at the highest token id when eos_token_id is 2, '
            'and this model pools at end-of-text id 2: HF cannot express it; export --to openclip')
  bos = None if tokenizer.bos_id is None else remap(tokenizer.bos_id)
  arch, preprocessor = hf.arch_from_config(config, eos, bos, float(flat['log_logit_scale']))
  tensors = apply_export(hf.rules(config), flat, model_size(config.model)['patch'])
  if swap:
    key = 'text_model.embeddings.token_embedding.weight'
    rows = tensors[key].copy()
    rows[[swap[0], swap[1]]] = rows[[swap[1], swap[0]]]
    tensors[key] = rows
  return tensors, arch, preprocessor


def fold_patch_bias(flat: dict) -> dict:
  """Both libraries' patch embeddings are bias-free: the bias moves into the patch positions."""
  flat = dict(flat)
  pos = flat['img/pos_embed'].copy()
  pos[1:] += flat['img/patch_embed/bias']  # Row 0 is the class token's, which has no bias.
  flat['img/pos_embed'] = pos
  return flat


def unstack_scanned(flat: dict, config) -> dict:
  """`scan_layers` runs keep each tower's blocks stacked ([depth, ...] under 'encoder/blocks/');
  the libraries want one entry per block ('encoder/blocks/<i>/')."""
  if not config.model.scan_layers:
    return flat
  out = {}
  for name, value in flat.items():
    tower, _, rest = name.partition('/encoder/blocks/')
    if not rest:
      out[name] = value
      continue
    for i, block in enumerate(value):
      out[f'{tower}/encoder/blocks/{i}/{rest}'] = block
  return out


def _write_json(obj: dict, path: str) -> None:
  storage.write_text(path, json.dumps(obj, indent=2))


def _readable(folder: str, names: list[str]) -> None:
  """Modes as for any file this user creates (a bucket's objects have none)."""
  if storage.is_bucket(folder):
    return
  umask = os.umask(0)
  os.umask(umask)
  for name in names:
    os.chmod(os.path.join(folder, name), 0o666 & ~umask)


def library_tokenizer_files(run, swap: tuple[int, int] | None) -> tuple[str, dict]:
  """The run's tokenizer as the libraries load it (tokenizer.json text, tokenizer_config.json)."""
  config = run.config
  json_text = run_tokenizer_json(config.data.tokenizer, run.workdir)
  return library_tokenizer(json_text, run.tokenizer, config.data.lowercase, swap)


def export_weights(workdir: str, step: int | None, target: str, out: str) -> int:
  """Writes the export; returns the checkpoint step exported."""
  require(target in ('openclip', 'hf'), f'--to {target!r}: expected openclip or hf')
  storage.check_reachable(out, '--out')
  run = RunModel(workdir)
  check_expressible(run.config, target)
  swap = hf_eos_swap(run.config, run.tokenizer) if target == 'hf' else None
  tokenizer_text, tokenizer_config = library_tokenizer_files(run, swap)  # Fails before writing.
  step, params = restore_params(workdir, step, run.abstract_params)
  flat = {k: np.asarray(v, np.float32) for k, v in named_leaves(params).items()}
  flat = fold_patch_bias(unstack_scanned(flat, run.config))
  storage.makedirs(out)
  if target == 'openclip':
    tensors, arch = openclip_files(run.config, flat, run.tokenizer)
    arch['model_cfg']['text_cfg'].update(openclip_text_cfg(run.config.data.tokenizer, out))
    names = ['open_clip_model.safetensors', 'open_clip_config.json', 'exported.json']
    write_safetensors(tensors, storage.join(out, names[0]))
    _write_json(arch, storage.join(out, names[1]))
    _write_json(arch['model_cfg'], storage.join(out, names[2]))
  else:
    tensors, arch, preprocessor = hf_files(run.config, flat, run.tokenizer, swap)
    names = ['model.safetensors', 'config.json', 'preprocessor_config.json']
    write_safetensors(tensors, storage.join(out, names[0]))
    _write_json(arch, storage.join(out, names[1]))
    _write_json(preprocessor, storage.join(out, names[2]))
  write_tokenizer(out, tokenizer_text, tokenizer_config, run.config.model.context_length)
  _readable(out, names + list(TOKENIZER_FILES))
  return step


def main(argv: list[str]) -> int:
  """Command-line entry point; bad input prints one line and exits 2."""
  parser = argparse.ArgumentParser(prog='python -m pretrain.export_weights')
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: newest)')
  parser.add_argument('--to', required=True, choices=('openclip', 'hf'))
  parser.add_argument('--out', required=True, help='output folder (local, gs:// or s3://)')
  args = parser.parse_args(argv)
  try:
    step = export_weights(args.workdir, args.step, args.to, args.out)
  except (ConfigError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'exported {args.workdir} step {step} for {args.to} into {args.out}', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))

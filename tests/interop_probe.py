"""A tiny CLIP-shaped run of ours, exported for both libraries: the probe of the export direction.

  python -m tests.interop_probe OUT   # OUT/workdir, OUT/openclip, OUT/hf, OUT/ours.npz
then, in the peers environment: python tests/data/make_interop_refs.py check-export OUT.
  python -m tests.interop_probe check-refs DIR   # published-size cases of `make-full DIR`
The tests use the same workdir to check export -> import round trips without torch.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from configs.common import CLIP_MEAN, CLIP_STD, base_config
from data.tokenizer import get_tokenizer
from pretrain.export_weights import export_weights
from pretrain.import_weights import write_workdir
from pretrain.step.train_step import init_params, model_graphdef_and_shapes

BPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'interop',
                   'bpe_simple_vocab_16e6.txt.gz')
CAPTIONS = ['a photo of a cat', 'hello! two dogs!', 'a red square on a blue circle', '',
            'A  Red\tSQUARE &amp; a blue circle.', 'a small red square above a large blue circle ' * 4]


def probe_config():
  """ViT 48x2 (patch 8, 32 px, ln_pre), text 32x2 over CLIP's BPE, embedding 24."""
  config = base_config()
  model = config.model
  model.variant = 'custom'
  model.custom = dict(patch=8, image_width=48, image_depth=2, image_heads=2, image_mlp=96,
                      text_width=32, text_depth=2, text_heads=2, text_mlp=64, embed_dim=24)
  model.image_size, model.image_ln_pre = 32, True
  model.image_mean, model.image_std = CLIP_MEAN, CLIP_STD
  model.vocab_size, model.context_length = 49408, 12
  config.data.tokenizer = f'clip_bpe:{BPE}'
  return config


# Captions to train a small sentencepiece model on (tests and `main`).
SP_CAPTIONS = [f'a {size} {color} {shape} {where} a {color2} {shape2}' for size in ('small', 'large')
               for color in ('red', 'green', 'blue') for shape in ('square', 'circle', 'triangle')
               for where in ('above', 'left of') for color2 in ('yellow', 'red')
               for shape2 in ('circle', 'star')]


def demo_config(tokenizer: str = 'shapes'):
  """The demo's model and tokenizer (`shapes`, end-of-text id 2), with the LayerNorm HF needs;
  or another tokenizer (a `bytes` run gets the 259 rows it needs)."""
  config = base_config()
  config.model.image_ln_pre = True
  config.data.tokenizer = tokenizer
  if tokenizer == 'bytes':
    config.model.vocab_size = 264
  return config


def make_probe_workdir(workdir: str, seed: int = 0, config=None):
  """Random parameters, every leaf perturbed (biases and the patch bias non-zero), written as a run."""
  config = config or probe_config()
  params = init_params(config, seed)
  leaves, treedef = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  leaves = [np.asarray(x) + 0.05 * rng.standard_normal(np.shape(x)).astype(np.float32)
            for x in leaves]
  params = jax.tree.unflatten(treedef, leaves)
  write_workdir(workdir, config, params, {'source': 'tests.interop_probe'})
  return config, params


def probe_inputs(config, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """uint8 images and our tokenizer's ids for CAPTIONS."""
  size = config.model.image_size
  images = np.random.default_rng(seed).integers(0, 256, (len(CAPTIONS), size, size, 3), np.uint8)
  tokens = get_tokenizer(config.data.tokenizer, config.data.lowercase).encode(
      CAPTIONS, config.model.context_length)
  return images, tokens


def model_outputs(graphdef, params, images, tokens) -> dict:
  """{'image_emb', 'text_emb', 'logits'} of the model `graphdef` + `params` on the inputs."""
  model = nnx.merge(graphdef, jax.tree.map(jnp.asarray, params))
  img, txt = model.embed_images(images), model.embed_texts(tokens)
  return {'image_emb': np.asarray(img), 'text_emb': np.asarray(txt),
          'logits': np.asarray(model.logit_scale() * img @ txt.T)}


def embeddings(config, params, images, tokens) -> dict:
  """Our embeddings and logits for the inputs, from a config and parameters."""
  return model_outputs(model_graphdef_and_shapes(config)[0], params, images, tokens)


def workdir_outputs(workdir: str, images, tokens) -> dict:
  """Embeddings and logits of a workdir's newest checkpoint, restored as the eval jobs do."""
  from eval.run_model import RunModel
  run = RunModel(workdir)
  return model_outputs(run.graphdef, run.embedder(None)[1].params, images, tokens)


def import_and_compare(folder: str, workdir: str, tokenizer: str) -> dict[str, float]:
  """Imports a reference case folder (arch.json, model.safetensors, io.npz) into `workdir`; the
  max |ours - library| of image/text embeddings and logits."""
  from pretrain.import_weights import import_weights
  source = 'openclip' if os.path.basename(folder).startswith('openclip') else 'hf'
  import_weights(source, os.path.join(folder, 'model.safetensors'),
                 os.path.join(folder, 'arch.json'), workdir, tokenizer)
  ref = np.load(os.path.join(folder, 'io.npz'))
  ours = workdir_outputs(workdir, ref['images'], ref['tokens'])
  return {key: float(np.max(np.abs(ours[key] - ref[key]))) for key in ours}


def check_refs(folder: str) -> None:
  """`check-refs DIR`: every case of `make_interop_refs.py make-full DIR`, imported and compared."""
  import tempfile
  for case in sorted(os.listdir(folder)):
    with tempfile.TemporaryDirectory() as tmp:
      diffs = import_and_compare(os.path.join(folder, case), tmp, f'clip_bpe:{BPE}')
    print(f'{case:24s} ' + '  '.join(f'{k} {v:.2e}' for k, v in diffs.items()), flush=True)


def main(out: str) -> None:
  """The probe (CLIP's BPE) in OUT, the demo's model and tokenizer in OUT/demo, and the demo's
  model with the bytes and a sentencepiece tokenizer in OUT/bytes, OUT/sentencepiece."""
  from data.tokenizer import train_sentencepiece
  os.makedirs(out, exist_ok=True)
  train_sentencepiece(SP_CAPTIONS, 60, os.path.join(out, 'sp.model'))
  runs = ((out, probe_config()), (os.path.join(out, 'demo'), demo_config()),
          (os.path.join(out, 'bytes'), demo_config('bytes')),
          (os.path.join(out, 'sentencepiece'),
           demo_config(f'sentencepiece:{os.path.join(out, "sp.model")}')))
  for folder, config in runs:
    config, params = make_probe_workdir(os.path.join(folder, 'workdir'), config=config)
    images, tokens = probe_inputs(config)
    ours = embeddings(config, params, images, tokens)
    for target in ('openclip', 'hf'):
      export_weights(os.path.join(folder, 'workdir'), None, target, os.path.join(folder, target))
    np.savez(os.path.join(folder, 'ours.npz'), images=images, tokens=tokens, **ours,
             mean=np.float32(config.model.image_mean), std=np.float32(config.model.image_std),
             captions=np.array(CAPTIONS))
  print(f'wrote {out}')


if __name__ == '__main__':
  if sys.argv[1:2] == ['check-refs']:
    check_refs(sys.argv[2])
  else:
    main(sys.argv[1])

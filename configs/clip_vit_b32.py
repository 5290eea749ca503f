"""CLIP ViT-B/32 (Radford et al. 2021; OpenCLIP's ViT-B-32) on a pod.

Batch 32,768, AdamW (0.9, 0.98, eps 1e-6), lr 5e-4 with 2,000 warmup steps and cosine decay,
weight decay 0.2, logit scale init 1/0.07 clamped at 100; 32 epochs of 400M pairs ~ 390k steps.
The data spec and the tokenizer path must point at your corpus and CLIP's `tokenizer.json`:
  python -m pretrain.train --config configs/clip_vit_b32.py --workdir gs://.../run \
      --config.data.train=SPEC --config.data.tokenizer=hf:/path/to/tokenizer.json
Variants: '' (the recipe), 'shapes' (same model and optimizer on the embedded data, small batch:
checks a launch end to end before paying for a pod).
"""

import ml_collections

from configs.common import CLIP_MEAN, CLIP_STD, base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """CLIP B/32's recipe, or a named variant of it."""
  config = base_config()
  config.total_steps = 390_000
  config.batch_size = 32_768
  config.log_every = 100
  config.checkpoint_every = 2_000
  config.keep_checkpoints = 3
  config.mesh.update(dict(data=-1, fsdp=8))  # 256 chips -> 32 x 8.
  config.model.update(dict(
      variant='b32', image_size=224, image_mean=CLIP_MEAN, image_std=CLIP_STD,
      vocab_size=49_408, context_length=77, image_pool='cls', text_causal=True, text_pool='eot'))
  config.loss.update(dict(init_logit_scale=1 / 0.07, max_logit_scale=100.0, label_smoothing=0.0))
  config.optim.update(dict(lr=5e-4, warmup_steps=2_000, weight_decay=0.2, b1=0.9, b2=0.98,
                           eps=1e-6, grad_clip_norm=0.0))
  config.data.update(dict(train='wds:/path/to/laion400m/{00000..41407}.tar',
                          tokenizer='hf:/path/to/clip/tokenizer.json', lowercase=True,
                          resize=224, flip=False, num_threads=16, prefetch=8))
  config.eval.update(dict(zeroshot='', templates='clip80'))
  if arg in (None, ''):
    return config
  if arg == 'shapes':
    config.total_steps, config.batch_size, config.mesh.fsdp = 20, 32, 1
    config.model.update(dict(image_size=64, vocab_size=64, context_length=16))
    config.optim.warmup_steps = 5
    config.data.update(dict(train='shapes:train', tokenizer='shapes', resize=0, num_threads=2))
    config.eval.update(dict(zeroshot='shapes:zeroshot', templates='shapes'))
    return config
  raise ValueError(f'unknown variant {arg!r} of configs/clip_vit_b32.py; known: shapes')

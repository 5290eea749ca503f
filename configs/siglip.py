"""SigLIP (Zhai et al. 2023): the pairwise sigmoid loss, ViT-B/16 and So400m/14 towers.

Loss: sigmoid over every image-text pair of the global batch (the ring: each device's texts pass
round the batch axes), logit = t * cos + b with t = exp(t'), t' initialised to log 10 and b to -10
(the paper's init; OpenCLIP's `init_logit_bias: -10`), no clamp on t. Towers as big_vision's
ViT 'B/16' and 'So400m/14' (width 1152, depth 27, mlp 4304, 16 heads) and OpenCLIP's
ViT-B-16-SigLIP / ViT-SO400M-14-SigLIP: MAP (attention-pool) image head, bidirectional text tower
as wide as the image tower, sentencepiece vocabulary of 32,000, 64 text tokens (16 for So400m, as
OpenCLIP's config), images in [-1, 1]. Recipe: batch 32,768; Adam beta2 0.95 (the paper: beta2
0.999 was unstable at this batch); lr 1e-3 with linear warmup and cosine decay; decoupled weight
decay 1e-4 per step at peak (big_vision's `wd`, which is not scaled by lr) = AdamW
weight_decay 0.1 at lr 1e-3; gradient clipping at norm 1 (as big_vision's image_text configs).
Differences from big_vision, by design here: text pooled at the last non-padding token (big_vision
takes the last position), a linear projection on both towers (big_vision's image MAP head has
none), LayerNorm eps 1e-5 (big_vision 1e-6). Warmup 5,000 steps and 300k steps (9.8B pairs seen)
are this file's choices; set total_steps for the pairs you can afford.
  python -m pretrain.train --config configs/siglip.py:so400m --workdir gs://.../run \\
      --config.data.train=SPEC --config.data.tokenizer=sentencepiece:/path/to/siglip/spm.model
Variants (`configs/siglip.py:NAME`): 'b16' (default), 'so400m'.
"""

import ml_collections

from configs.common import base_config

# Name -> (tower sizes in pretrain/models/variants.py, text tokens).
VARIANTS = {'b16': ('siglip_b16', 64), 'so400m': ('so400m', 16)}


def recipe() -> ml_collections.ConfigDict:
  """SigLIP's loss, optimizer and data settings; the towers are set by `get_config`."""
  config = base_config()
  config.total_steps = 300_000
  config.batch_size = 32_768
  config.log_every = 100
  config.checkpoint_every = 2_000
  config.keep_checkpoints = 3
  config.mesh.update(dict(data=-1, fsdp=8))  # 256 chips -> 32 x 8: 128 pairs per chip.
  config.model.update(dict(
      image_size=224, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5), image_pool='map',
      image_ln_pre=False, activation='gelu', dtype='bfloat16', vocab_size=32_000,
      text_causal=False, text_pool='eot'))
  config.loss.update(dict(name='sigmoid', impl='ring', init_logit_scale=10.0,
                          init_logit_bias=-10.0, max_logit_scale=0.0, label_smoothing=0.0))
  config.optim.update(dict(name='adamw', lr=1e-3, warmup_steps=5_000, decay='cosine',
                           end_lr_ratio=0.0, weight_decay=0.1, b1=0.9, b2=0.95, eps=1e-8,
                           grad_clip_norm=1.0))
  config.data.update(dict(train='wds:/path/to/webli-like/{00000..99999}.tar',
                          tokenizer='sentencepiece:/path/to/siglip/spm.model', lowercase=True,
                          resize=224, flip=False, num_threads=16, prefetch=8))
  config.eval.update(dict(zeroshot='', templates='clip80'))
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """SigLIP's recipe with the towers of a named variant ('b16' when none is given)."""
  name = arg or 'b16'
  if name not in VARIANTS:
    raise ValueError(f'unknown variant {name!r} of configs/siglip.py; known: {", ".join(VARIANTS)}')
  variant, context = VARIANTS[name]
  config = recipe()
  config.model.update(dict(variant=variant, context_length=context))
  if name == 'so400m':
    # 27 layers of width 1152 at 256 tokens: scan the blocks and keep only matmul outputs.
    config.model.update(dict(scan_layers=True, image_remat='dots', text_remat='dots'))
  return config

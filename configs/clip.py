"""CLIP (Radford et al. 2021) with OpenCLIP's ViT architectures, on a 256-chip pod.

Towers: OpenCLIP's model_configs ViT-B-32, ViT-B-16, ViT-L-14 and ViT-L-14-336 (GELU, ln_pre,
[CLS] pooling; text: causal, 77 tokens, CLIP's 49,408 BPE vocabulary, pooled at end-of-text).
Recipe (CLIP's, paper Sec. 2.5 and its hyperparameter tables): global batch 32,768; AdamW with
beta2 0.98, eps 1e-6, weight decay 0.2; lr 5e-4 for the B models and 4e-4 for L/14; 2,000 linear
warmup steps (CLIP's; OpenCLIP's LAION-2B L/14 runs used 10k at lr 1e-3 with batch 86k+, a
different recipe), cosine decay to 0; logit scale init 1/0.07 clamped at 100; 32 epochs of 400M
pairs = 390,625 steps; mixed precision (bf16 matmuls, fp32 parameters, as CLIP's fp16 training).
  python -m pretrain.train --config configs/clip.py:b16 --workdir gs://.../run \\
      --config.data.train=SPEC --config.data.tokenizer=hf:/path/to/clip/tokenizer.json
Variants (`configs/clip.py:NAME`): 'b32', 'b16' (default), 'l14', 'l14_336'. As written, l14_336
trains from scratch at 336 px; CLIP's own L/14@336px is the 224 px run trained one more epoch
(EPOCH_STEPS) at 336 px, which needs the image position embeddings resampled from 16x16 to 24x24
(init_from takes same-shaped parameters only, so that is not offered here). `python -m pretrain.plan --config configs/clip.py:l14 --mesh data=32,fsdp=8`
shows what a chip holds; README records the figures. configs/clip_vit_b32.py is the older B/32
file (fp32, no ln_pre: not OpenCLIP's tower), kept as it was so its runs resume and compare.
"""

import ml_collections

from configs.common import CLIP_MEAN, CLIP_STD, base_config

# Name -> (tower sizes in pretrain/models/variants.py, image size, peak lr).
VARIANTS = {
    'b32': ('b32', 224, 5e-4),
    'b16': ('b16', 224, 5e-4),
    'l14': ('l14', 224, 4e-4),
    'l14_336': ('l14', 336, 4e-4),
}
EPOCH_STEPS = 12_208     # 400M pairs / 32,768, rounded up.


def recipe() -> ml_collections.ConfigDict:
  """CLIP's optimizer, loss, data and schedule; the towers are set by `get_config`."""
  config = base_config()
  config.total_steps = 390_625           # 32 epochs x 400M pairs / 32,768.
  config.batch_size = 32_768
  config.log_every = 100
  config.checkpoint_every = 2_000
  config.keep_checkpoints = 3
  config.mesh.update(dict(data=-1, fsdp=8))  # 256 chips -> 32 x 8: 128 pairs per chip.
  config.model.update(dict(
      image_size=224, image_mean=CLIP_MEAN, image_std=CLIP_STD, image_pool='cls',
      image_ln_pre=True, activation='gelu', dtype='bfloat16', vocab_size=49_408,
      context_length=77, text_causal=True, text_pool='eot'))
  config.loss.update(dict(name='softmax', impl='auto', init_logit_scale=1 / 0.07,
                          max_logit_scale=100.0, label_smoothing=0.0))
  config.optim.update(dict(name='adamw', warmup_steps=2_000, decay='cosine', end_lr_ratio=0.0,
                           weight_decay=0.2, b1=0.9, b2=0.98, eps=1e-6, grad_clip_norm=0.0))
  config.data.update(dict(train='wds:/path/to/laion400m/{00000..41407}.tar',
                          tokenizer='hf:/path/to/clip/tokenizer.json', lowercase=True,
                          resize=224, flip=False, num_threads=16, prefetch=8))
  config.eval.update(dict(zeroshot='', templates='clip80'))
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """CLIP's recipe with the towers of a named variant ('b16' when none is given)."""
  name = arg or 'b16'
  if name not in VARIANTS:
    raise ValueError(f'unknown variant {name!r} of configs/clip.py; known: {", ".join(VARIANTS)}')
  variant, image_size, lr = VARIANTS[name]
  config = recipe()
  config.model.update(dict(variant=variant, image_size=image_size))
  config.data.resize = image_size
  config.optim.lr = lr
  if variant == 'l14':
    # 257 tokens x 24 layers: keep only matmul outputs and scan the blocks, so 128 pairs per chip
    # fit an 80 GiB GPU (README's plan table); at 336 px (577 tokens) the image tower keeps only
    # each block's input (with dots it would need ~80 GiB per chip).
    config.model.update(dict(scan_layers=True, image_remat='full' if image_size > 224 else 'dots',
                             text_remat='dots'))
  return config

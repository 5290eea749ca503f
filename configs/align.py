"""ALIGN (Jia et al. 2021): EfficientNet image tower, BERT-style text tower, LAMB, label smoothing.

The paper's recipe: both towers from scratch; symmetric softmax over the global batch with ONE learned
temperature (init 1.0, no clamp) and label smoothing 0.1; LAMB, weight decay 1e-5, lr warmed up
linearly to 1e-3 over 10k steps then decayed linearly to 0 at 1.2M steps; batch 16,384 on 1024
TPUv3 cores; train images resized to shorter side 346 and randomly cropped to 289; texts of at most
64 WordPiece tokens (a BERT `tokenizer.json`, 100k vocabulary in the paper).
  python -m pretrain.train --config configs/align.py:l2 --workdir gs://.../run \
      --config.data.train=SPEC --config.data.tokenizer=hf:/path/to/wordpiece/tokenizer.json
Variants (`configs/align.py:NAME`): 'b7' (EfficientNet-B7 + BERT-Base, embedding 640), 'l2'
(EfficientNet-L2 + BERT-Large, embedding 1376, the paper's main model), 'tiny' (EfficientNet-B0 and a
small text encoder on the embedded data: CPU minutes).
"""

import ml_collections

from configs.common import base_config

# Towers by variant; the rest of the recipe is shared.
VARIANTS = {'b7': 'align_b7', 'l2': 'align_l2', 'tiny': 'align_tiny'}


def recipe() -> ml_collections.ConfigDict:
  """The paper's optimizer, loss, text and image settings (L2 on a 1024-core mesh)."""
  config = base_config()
  config.total_steps = 1_200_000
  config.batch_size = 16_384               # 16 pairs per core x 1024 TPUv3 cores.
  config.log_every = 100
  config.checkpoint_every = 2_000
  config.keep_checkpoints = 3
  config.mesh.update(dict(data=-1, fsdp=1))  # Pure data parallelism, as in the paper.
  config.model.update(dict(
      variant='align_l2', image_size=289, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5),
      image_drop_path=0.2, vocab_size=100_000, context_length=64,
      text_causal=False, text_pool='cls'))   # Bidirectional encoder, [CLS] pooling.
  config.loss.update(dict(name='softmax', init_logit_scale=1.0, max_logit_scale=0.0,
                          label_smoothing=0.1))
  config.optim.update(dict(name='lamb', lr=1e-3, warmup_steps=10_000, decay='linear',
                           end_lr_ratio=0.0, weight_decay=1e-5, b1=0.9, b2=0.999, eps=1e-6,
                           grad_clip_norm=0.0))
  config.data.update(dict(train='wds:/path/to/alt-text/{00000..99999}.tar',
                          tokenizer='hf:/path/to/wordpiece/tokenizer.json', lowercase=True,
                          resize=346, flip=False, num_threads=16, prefetch=8))
  config.eval.update(dict(zeroshot='', templates='clip80'))
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """ALIGN's recipe with the towers of a named variant ('l2' when none is given)."""
  name = arg or 'l2'
  if name not in VARIANTS:
    raise ValueError(f'unknown variant {name!r} of configs/align.py; known: {", ".join(VARIANTS)}')
  config = recipe()
  config.model.variant = VARIANTS[name]
  if name == 'b7':
    config.model.image_size = 289  # The paper trains B7 at the same crop as L2.
  if name == 'tiny':  # CPU minutes: 32 px (crop of 38, the paper's 289/346), a short schedule.
    config.total_steps, config.batch_size = 200, 64
    config.log_every, config.checkpoint_every, config.keep_checkpoints = 20, 100, 2
    config.model.update(dict(image_size=32, vocab_size=64, context_length=16,
                             image_bn_momentum=0.9))  # averages that settle within 200 steps
    config.optim.update(dict(lr=1e-2, warmup_steps=20))  # 200 steps, not 1.2M: a larger lr.
    config.data.update(dict(train='shapes:train', tokenizer='shapes', resize=38, num_threads=2,
                            prefetch=4))
    config.eval.update(dict(zeroshot='shapes:zeroshot', templates='shapes'))
  return config

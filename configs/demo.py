"""The demo: a small CLIP on the embedded shapes corpus, a few CPU minutes.

  python -m pretrain.train --config configs/demo.py --workdir /tmp/demo
Variants (`configs/demo.py:NAME`): '' (demo model, 32 px), 'tiny' (the benchmark's tiny model,
64 px, vocab 8192, context 32).
"""

import ml_collections

from configs.common import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The demo config, or one of its named variants."""
  config = base_config()
  if arg in (None, '', 'demo'):
    # CLIP's LayerNorm before the image encoder: HF CLIP always applies one, so with it the demo
    # exports to both OpenCLIP and HF (pretrain.export_weights).
    config.model.image_ln_pre = True
    # Zero-shot accuracy on shapes:zeroshot at steps 50, 100, 150 and 200 (a few seconds each on
    # the CPU, about 5% of the run): the learning curve next to the loss.
    config.eval.every = 50
    return config
  if arg == 'tiny':
    config.model.update(dict(variant='tiny', image_size=64, vocab_size=8192, context_length=32))
    config.batch_size = 256
    return config
  raise ValueError(f'unknown variant {arg!r} of configs/demo.py; known: demo, tiny')

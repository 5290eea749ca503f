"""LiT (locked-image tuning, Zhai et al. 2022): a pretrained image tower, locked; a text tower trained
from scratch to match it.

  python -m pretrain.train --config configs/lit.py:PRETRAINED_WORKDIR --workdir DIR
PRETRAINED_WORKDIR is a training run's workdir or one written by `pretrain.import_weights` (e.g. an
OpenCLIP or HF CLIP). Its model config is reused (image tower as is; text tower of the same sizes,
fresh), its tokenizer too; only the image tower's parameters are taken (`init_from_include`) and
frozen (`freeze`): no gradient, optimizer state or weight decay. The defaults train on the embedded
shapes corpus; point `data.train` at your pairs for a real run.
"""

import json

import ml_collections

from configs.common import base_config
from data import storage
from data.tokenizer import workdir_spec


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """LiT from the pretrained workdir `arg`."""
  if not arg:
    raise ValueError('configs/lit.py needs the pretrained workdir: --config configs/lit.py:DIR')
  path = storage.join(arg, 'config.json')
  if not storage.is_file(path):
    raise ValueError(f'{arg} has no config.json: give a training or import_weights workdir')
  pretrained = json.loads(storage.read_text(path))
  config = base_config()
  config.model.update(pretrained['model'])
  config.data.tokenizer = workdir_spec(pretrained['data']['tokenizer'], storage.absolute(arg))
  config.data.lowercase = pretrained['data'].get('lowercase', True)
  config.init_from = storage.absolute(arg)
  config.init_from_include = ('img/.*',)   # The image tower; the text tower and temperature start fresh.
  config.freeze = ('img/.*',)              # Locked: LiT's best setting ("Lu").
  config.loss.max_logit_scale = 100.0
  config.optim.weight_decay = 1e-4         # LiT trains with little decay on the text tower.
  config.eval.zeroshot = 'shapes:zeroshot'
  return config

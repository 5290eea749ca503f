"""The start-up block: its fields from plain values, and parameter counts per tower."""

import numpy as np

from configs.demo import get_config
from pretrain.models.param_paths import named_leaves
from pretrain.runtime.startup import (Devices, count_params, describe_config, describe_data,
                                      describe_eval, describe_run)
from pretrain.step.train_step import model_graphdef_and_shapes


def test_run_block_names_every_field():
  devices = Devices('gpu', 2, 16, 8, {'data': 8, 'fsdp': 2})
  lines = describe_run(
      workdir='gs://b/run', config=describe_config('configs/clip.py:b32', ['batch_size=4096']),
      resumed_from=1200, devices=devices,
      params={'image': 87_849_216, 'text': 63_428_608, 'other': 1, 'total': 151_277_825},
      global_batch=4096, batch_ways=8, accum_steps=2, total_steps=10_000,
      data=describe_data('wds:gs://b/laion/{000..099}.tar', 1_000_000, shards=100))
  assert lines == [
      'run: gs://b/run',
      'config: configs/clip.py, variant b32; overrides: batch_size=4096',
      'start: resumed from step 1200; total_steps 10000',
      'devices: 2 process(es) x 8 gpu device(s) = 16; mesh data=8 x fsdp=2 (axes data, fsdp)',
      'parameters: image 87.85M, text 63.43M, total 151.28M (151277825)',
      'batch: global 4096, per device 512 (batch split 8 ways), 256 per tower pass (accum_steps 2)',
      'data: wds:gs://b/laion/{000..099}.tar: 1000000 samples in 100 shards',
  ]
  fresh = describe_run(workdir='/tmp/w', config=describe_config('configs/demo.py'),
                       resumed_from=None, devices=Devices('cpu', 1, 8, 8, {'data': 8, 'fsdp': 1}),
                       params={'image': 5, 'text': 6, 'other': 1, 'total': 12}, global_batch=128,
                       batch_ways=8, accum_steps=1, total_steps=200,
                       data=describe_data('shapes:train', 200_000))
  assert fresh[1:3] == ['config: configs/demo.py, variant (default)',
                        'start: fresh (step 0); total_steps 200']
  assert fresh[4:] == ['parameters: image 5, text 6, total 12 (12)',
                       'batch: global 128, per device 16 (batch split 8 ways)',
                       'data: shapes:train: 200000 samples']


def test_eval_block_names_the_devices_once():
  devices = Devices('tpu', 4, 16, 4, {'data': 16, 'fsdp': 1})
  assert describe_eval(workdir='gs://b/run', step=500, devices=devices) == [
      'checkpoint: step 500 of gs://b/run',
      'devices: 4 process(es) x 4 tpu device(s) = 16; mesh data=16 x fsdp=1 (axes data, fsdp)']
  assert describe_eval(workdir='r', step=7, devices=None) == ['checkpoint: step 7 of r']


def test_parameter_counts_per_tower_add_up_to_every_leaf():
  for variant in ('demo', 'tiny'):
    config = get_config(variant)
    config.loss.name = 'sigmoid'  # a learnt bias as well as the temperature
    _, shapes = model_graphdef_and_shapes(config)
    sizes = {name: int(np.prod(leaf.shape)) for name, leaf in named_leaves(shapes).items()}
    counts = count_params(shapes)
    assert counts['image'] == sum(n for k, n in sizes.items() if k.startswith('img/'))
    assert counts['text'] == sum(n for k, n in sizes.items() if k.startswith('txt/'))
    assert counts['other'] == 2 and counts['total'] == sum(sizes.values())
    assert counts['image'] > 100_000 and counts['text'] > 100_000

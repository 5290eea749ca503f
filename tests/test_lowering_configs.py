"""Every config file variant's train step lowers for cpu, cuda and tpu: as written, and with its
levers pulled (bf16, scanned layers, remat, a ring loss, gradient caching, FSDP) where the model
takes them. The pairwise matrix over those settings runs on the demo (tests/test_lowering.py).
"""

import pytest

from pretrain.config import validate
from pretrain.parallel import sharding
from pretrain.step.lowering import PLATFORMS, lower_step
from tests.lowering_cases import case_config, expected_attention, lit_base  # noqa: F401

# ViT configs other than the demo: as written, then with every lever pulled.
LEVERS = dict(dtype='bfloat16', scan=True, remat='full', loss=('sigmoid', 'ring'), accum=2,
              mesh=(4, 2))
# BatchNorm (EfficientNet) towers take neither scan, remat nor gradient caching (validate refuses).
BATCHNORM_LEVERS = dict(dtype='bfloat16', loss=('softmax', 'tiled'))
# LiT's frozen image tower takes no gradient caching (validate refuses freeze with accum_steps).
LIT_LEVERS = {**LEVERS, 'accum': 1}
CASES = (
    [(spec, case) for spec in ('configs/demo.py:tiny', 'configs/clip_vit_b32.py',
                               'configs/clip_vit_b32.py:shapes') for case in ({}, LEVERS)]
    + [('lit', {}), ('lit', LIT_LEVERS)]
    + [('configs/align.py:tiny', case) for case in ({}, BATCHNORM_LEVERS)]
    + [('configs/align.py:b7', {})]
    + [('configs/clip.py:b16', {}), ('configs/siglip.py:so400m', {})]
)
# The full-size ALIGN towers trace for minutes on 2 cores (hundreds of MBConv blocks): b7 as
# written, marked slow (CI runs it). l2 is the same code at other widths and depths and takes 6
# minutes more to trace here; `python -m pretrain.plan --config configs/align.py:l2 --mesh data=8
# --lower_for cpu,cuda,tpu` lowers it on demand.
# The published CLIP and SigLIP models as written, slow-marked: B/16 (bf16, unrolled, causal text,
# [CLS]) and So400m (bf16, scanned with remat=dots, MAP head, bidirectional text, sigmoid ring) cover
# their files' code paths; b32, l14, l14_336 and SigLIP b16 are the same code at other sizes:
# `python -m pretrain.plan --config configs/clip.py:l14 --mesh data=8 --lower_for cpu,cuda,tpu`
# (benchmarks/README.md records those lines).
SLOW = {'configs/align.py:b7', 'configs/clip.py:b16', 'configs/siglip.py:so400m'}


@pytest.mark.parametrize('spec,case', [
    pytest.param(spec, case, marks=[pytest.mark.slow] if spec in SLOW else [])
    for spec, case in CASES], ids=[f'{spec}-{case}' for spec, case in CASES])
def test_config_lowers_for_every_platform(spec, case, lit_base):  # noqa: F811
  config = case_config(spec, case, lit_base)
  shape = validate.check_training(config, 8, 1)
  lowered = lower_step(config, sharding.make_mesh(shape), PLATFORMS)
  for step in lowered:
    assert step.problems() == [], (step.platform, step.problems())
    assert step.attention == expected_attention(step.platform, config.model.dtype)

"""OpenCLIP's CLIP (ViT image tower, causal text Transformer) <-> our config and parameters.

OpenCLIP keeps q/k/v fused (`in_proj_weight`, rows q, k, v), its projections `visual.proj` and
`text_projection` are plain (in, out) matrices, the patch embedding is a bias-free conv, and text is
pooled at the highest token id ('argmax') or at the first `eos_id` ('eos').
"""

from configs.common import CLIP_MEAN, CLIP_STD, base_config
from data.errors import require
from pretrain.interop.common import Rule, layer_norm_rules, linear_rules
from pretrain.models.variants import model_size

# Options of OpenCLIP's vision/text configs our towers do not have, with the value they must keep.
UNSUPPORTED_VISION = dict(ls_init_value=None, attentional_pool=False, pos_embed_type='learnable',
                          final_ln_after_pool=False, pool_type='tok', timm_model_name=None,
                          qk_norm=False, scaled_cosine_attn=False, scale_heads=False,
                          scale_attn_inner=False, scale_attn=False, scale_fc=False,
                          act_kwargs=None, norm_kwargs=None)
UNSUPPORTED_TEXT = dict(ls_init_value=None, embed_cls=False, no_causal_mask=False,
                        final_ln_after_pool=False, proj_bias=False, proj_type='linear',
                        hf_model_name=None, qk_norm=False, scaled_cosine_attn=False,
                        scale_heads=False, scale_attn_inner=False, scale_attn=False, scale_fc=False,
                        act_kwargs=None, norm_kwargs=None)
TEXT_POOLS = {'argmax': 'argmax', 'eos': 'eos_id'}


def _check_supported(cfg: dict, unsupported: dict, tower: str) -> None:
  for name, default in unsupported.items():
    value = cfg.get(name, default)
    require(value == default or (default is None and not value),
            f'OpenCLIP {tower}_cfg.{name}={cfg.get(name)!r} is not supported by this project\'s '
            f'towers (only {default!r})')


def model_cfg_of(arch: dict) -> dict:
  """The model config inside an `open_clip_config.json`, or the model config itself."""
  return arch.get('model_cfg', arch)


def config_from_arch(arch: dict):
  """Our full config for an OpenCLIP model config (or open_clip_config.json)."""
  cfg = model_cfg_of(arch)
  vision, text = dict(cfg.get('vision_cfg', {})), dict(cfg.get('text_cfg', {}))
  require(isinstance(vision.get('layers', 12), int),
          'OpenCLIP ResNet image towers (vision_cfg.layers as a list) are not supported')
  _check_supported(vision, UNSUPPORTED_VISION, 'vision')
  _check_supported(text, UNSUPPORTED_TEXT, 'text')
  pool = text.get('pool_type', 'argmax')
  require(pool in TEXT_POOLS, f'OpenCLIP text_cfg.pool_type={pool!r} is not supported '
          f'(only {", ".join(TEXT_POOLS)})')
  image_size = vision.get('image_size', 224)
  if isinstance(image_size, (list, tuple)):
    require(image_size[0] == image_size[1], f'non-square image_size {image_size} is not supported')
    image_size = image_size[0]
  v_width, t_width = vision.get('width', 768), text.get('width', 512)
  config = base_config()
  model = config.model
  model.variant = 'custom'
  model.custom = dict(
      patch=vision.get('patch_size', 16), image_width=v_width,
      image_depth=vision.get('layers', 12), image_heads=v_width // vision.get('head_width', 64),
      image_mlp=int(v_width * vision.get('mlp_ratio', 4.0)), text_width=t_width,
      text_depth=text.get('layers', 12), text_heads=text.get('heads', 8),
      text_mlp=int(t_width * text.get('mlp_ratio', 4.0)), embed_dim=cfg['embed_dim'])
  model.activation = 'quick_gelu' if cfg.get('quick_gelu', False) else 'gelu'
  model.image_size = image_size
  model.image_ln_pre = not vision.get('no_ln_pre', False)
  preprocess = arch.get('preprocess_cfg', {})
  model.image_mean = tuple(preprocess.get('mean', CLIP_MEAN))
  model.image_std = tuple(preprocess.get('std', CLIP_STD))
  model.vocab_size = text.get('vocab_size', 49408)
  model.context_length = text.get('context_length', 77)
  model.text_pool = TEXT_POOLS[pool]
  model.text_eos_id = text.get('eos_id', 2) if pool == 'eos' else -1
  if cfg.get('init_logit_bias') is not None:  # SigLIP-style models trained with a sigmoid loss.
    config.loss.name, config.loss.impl = 'sigmoid', 'ring'
  config.loss.max_logit_scale = 0.0  # Evaluate exactly the source's scale (no clamp).
  return config


def _block_rules(ours: str, theirs: str) -> list[Rule]:
  return (layer_norm_rules(f'{ours}/ln_attn', f'{theirs}.ln_1')
          + [Rule(f'{ours}/attn/qkv/kernel', (f'{theirs}.attn.in_proj_weight',), 'linear'),
             Rule(f'{ours}/attn/qkv/bias', (f'{theirs}.attn.in_proj_bias',), 'copy')]
          + linear_rules(f'{ours}/attn/out', f'{theirs}.attn.out_proj')
          + layer_norm_rules(f'{ours}/ln_mlp', f'{theirs}.ln_2')
          + linear_rules(f'{ours}/mlp/fc1', f'{theirs}.mlp.c_fc')
          + linear_rules(f'{ours}/mlp/fc2', f'{theirs}.mlp.c_proj'))


def rules(config) -> list[Rule]:
  """Our parameter <-> OpenCLIP state-dict key, for every parameter but the patch bias."""
  size, model = model_size(config.model), config.model
  out = [Rule('img/patch_embed/kernel', ('visual.conv1.weight',), 'patch'),
         Rule('img/cls_token', ('visual.class_embedding',), 'cls'),
         Rule('img/pos_embed', ('visual.positional_embedding',), 'copy'),
         Rule('img/proj/kernel', ('visual.proj',), 'copy'),
         Rule('txt/token_embed/embedding', ('token_embedding.weight',), 'copy'),
         Rule('txt/pos_embed', ('positional_embedding',), 'copy'),
         Rule('txt/proj/kernel', ('text_projection',), 'copy'),
         Rule('log_logit_scale', ('logit_scale',), 'copy')]
  if model.image_ln_pre:
    out += layer_norm_rules('img/ln_pre', 'visual.ln_pre')
  out += layer_norm_rules('img/encoder/ln_final', 'visual.ln_post')
  out += layer_norm_rules('txt/encoder/ln_final', 'ln_final')
  for i in range(size['image_depth']):
    out += _block_rules(f'img/encoder/blocks/{i}', f'visual.transformer.resblocks.{i}')
  for i in range(size['text_depth']):
    out += _block_rules(f'txt/encoder/blocks/{i}', f'transformer.resblocks.{i}')
  if config.loss.name == 'sigmoid':
    out.append(Rule('logit_bias', ('logit_bias',), 'copy'))
  return out


def arch_from_config(config, text_pool: str, eos_id: int) -> dict:
  """`open_clip_config.json` contents for our config (pooling resolved by the exporter)."""
  size, model = model_size(config.model), config.model
  text_cfg = dict(context_length=model.context_length, vocab_size=model.vocab_size,
                  width=size['text_width'], heads=size['text_heads'], layers=size['text_depth'],
                  mlp_ratio=size['text_mlp'] / size['text_width'], pool_type=text_pool)
  if text_pool == 'eos':
    text_cfg['eos_id'] = eos_id
  model_cfg = dict(
      embed_dim=size['embed_dim'], quick_gelu=model.activation == 'quick_gelu',
      vision_cfg=dict(image_size=model.image_size, layers=size['image_depth'],
                      width=size['image_width'], patch_size=size['patch'],
                      head_width=size['image_width'] // size['image_heads'],
                      mlp_ratio=size['image_mlp'] / size['image_width'],
                      no_ln_pre=not model.image_ln_pre),
      text_cfg=text_cfg)
  if config.loss.name == 'sigmoid':
    model_cfg['init_logit_bias'] = config.loss.init_logit_bias
  preprocess = dict(size=model.image_size, mean=list(model.image_mean), std=list(model.image_std),
                    interpolation='bicubic', resize_mode='shortest')
  return dict(model_cfg=model_cfg, preprocess_cfg=preprocess)

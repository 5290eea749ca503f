"""OpenCLIP's CLIP (ViT image tower, causal text Transformer) <-> our config and parameters.

OpenCLIP keeps q/k/v fused (`in_proj_weight`, rows q, k, v), its projections `visual.proj` and
`text_projection` are plain (in, out) matrices, the patch embedding is a bias-free conv, and text is
pooled at the highest token id ('argmax') or at the first `eos_id` ('eos').
"""

from configs.common import CLIP_MEAN, CLIP_STD, base_config
from data.errors import require
from pretrain.interop import fields
from pretrain.interop.common import Rule, layer_norm_rules, linear_rules
from pretrain.interop.fields import field, section
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
  require(isinstance(arch, dict), 'an OpenCLIP architecture file holds a JSON object')
  return section(arch, 'model_cfg', '') if 'model_cfg' in arch else arch


def _image_size(vision: dict, v: str) -> int:
  """vision_cfg.image_size: an integer or a square [height, width]."""
  size = vision.get('image_size')
  if isinstance(size, (list, tuple)):
    require(len(size) == 2 and size[0] == size[1],
            f'{v}image_size={size!r}: only square images [n, n] are supported')
    return field({'image_size': size[0]}, 'image_size', v, 'pos_int')
  return field(vision, 'image_size', v, 'pos_int', 224)


def _tower_sizes(vision: dict, text: dict, v: str, t: str) -> dict:
  """model.custom from the tower configs, every field checked (OpenCLIP's defaults where absent)."""
  require(not isinstance(vision.get('layers'), (list, tuple)),
          f'OpenCLIP ResNet image towers ({v}layers as a list) are not supported')
  v_width, t_width = field(vision, 'width', v, 'pos_int', 768), field(text, 'width', t, 'pos_int', 512)
  head_width, heads = field(vision, 'head_width', v, 'pos_int', 64), field(text, 'heads', t, 'pos_int', 8)
  fields.divides(head_width, v_width, f'{v}head_width', f'{v}width')
  fields.divides(heads, t_width, f'{t}heads', f'{t}width')
  return dict(
      patch=field(vision, 'patch_size', v, 'pos_int', 16), image_width=v_width,
      image_depth=field(vision, 'layers', v, 'pos_int', 12), image_heads=v_width // head_width,
      image_mlp=int(v_width * field(vision, 'mlp_ratio', v, 'pos_number', 4.0)),
      text_width=t_width, text_depth=field(text, 'layers', t, 'pos_int', 12), text_heads=heads,
      text_mlp=int(t_width * field(text, 'mlp_ratio', t, 'pos_number', 4.0)))


def config_from_arch(arch: dict):
  """Our full config for an OpenCLIP model config (or open_clip_config.json)."""
  cfg = model_cfg_of(arch)
  m = 'model_cfg.' if 'model_cfg' in arch else ''  # Errors name fields as the file nests them.
  v, t = f'{m}vision_cfg.', f'{m}text_cfg.'
  vision, text = section(cfg, 'vision_cfg', m), section(cfg, 'text_cfg', m)
  _check_supported(vision, UNSUPPORTED_VISION, 'vision')
  _check_supported(text, UNSUPPORTED_TEXT, 'text')
  pool = field(text, 'pool_type', t, 'str', 'argmax')
  require(pool in TEXT_POOLS, f'OpenCLIP {t}pool_type={pool!r} is not supported '
          f'(only {", ".join(TEXT_POOLS)})')
  config = base_config()
  model = config.model
  model.variant = 'custom'
  model.custom = dict(_tower_sizes(vision, text, v, t),
                      embed_dim=field(cfg, 'embed_dim', m, 'pos_int'))
  model.activation = 'quick_gelu' if field(cfg, 'quick_gelu', m, 'bool', False) else 'gelu'
  model.image_size = _image_size(vision, v)
  fields.divides(model.custom['patch'], model.image_size, f'{v}patch_size', f'{v}image_size')
  model.image_ln_pre = not field(vision, 'no_ln_pre', v, 'bool', False)
  preprocess = section(arch, 'preprocess_cfg', '')
  model.image_mean = tuple(field(preprocess, 'mean', 'preprocess_cfg.', 'rgb', CLIP_MEAN))
  model.image_std = tuple(field(preprocess, 'std', 'preprocess_cfg.', 'pos_rgb', CLIP_STD))
  model.vocab_size = field(text, 'vocab_size', t, 'pos_int', 49408)
  model.context_length = field(text, 'context_length', t, 'pos_int', 77)
  model.text_pool = TEXT_POOLS[pool]
  model.text_eos_id = -1
  if pool == 'eos':
    model.text_eos_id = field(text, 'eos_id', t, 'int', 2)
    require(0 <= model.text_eos_id < model.vocab_size, f'{t}eos_id={model.text_eos_id} '
            f'is not an id of the vocabulary ({t}vocab_size={model.vocab_size})')
  if field(cfg, 'init_logit_bias', m, 'number', None) is not None:  # SigLIP-style (sigmoid loss).
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

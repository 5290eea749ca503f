"""Hugging Face `CLIPModel` <-> our config and parameters.

HF keeps q/k/v as separate Linears, its projections are bias-free Linears, there is always a
LayerNorm before the vision encoder (`pre_layrnorm`), and text is pooled at the first
`eos_token_id` — or, for the legacy id 2, at the highest token id.
"""

from configs.common import CLIP_MEAN, CLIP_STD, base_config
from data.errors import require
from pretrain.interop import fields
from pretrain.interop.common import Rule, layer_norm_rules, linear_rules
from pretrain.interop.fields import field, section
from pretrain.models.variants import model_size

# transformers' CLIPTextConfig / CLIPVisionConfig defaults (used where config.json omits a field).
TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048,
                     num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77,
                     hidden_act='quick_gelu', layer_norm_eps=1e-5, eos_token_id=49407,
                     bos_token_id=49406, pad_token_id=1)
VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                       num_attention_heads=12, num_channels=3, image_size=224, patch_size=32,
                       hidden_act='quick_gelu', layer_norm_eps=1e-5)
ACTIVATIONS = {'quick_gelu': 'quick_gelu', 'gelu': 'gelu'}
LEGACY_EOS = 2  # HF pools at argmax(input_ids) when eos_token_id is 2 (configs before the fix).


INT_FIELDS = {'text': ('vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers',
                         'num_attention_heads', 'max_position_embeddings'),
              'vision': ('hidden_size', 'intermediate_size', 'num_hidden_layers',
                         'num_attention_heads', 'num_channels', 'image_size', 'patch_size')}


def _tower(arch: dict, name: str) -> dict:
  """`{name}_config` (or older transformers' `{name}_config_dict`) over the defaults, checked."""
  key = f'{name}_config' if arch.get(f'{name}_config') is not None else f'{name}_config_dict'
  where = f'{key}.'
  given = section(arch, key, '')
  defaults = TEXT_DEFAULTS if name == 'text' else VISION_DEFAULTS
  cfg = {field_name: field(given, field_name, where, 'pos_int', defaults[field_name])
         for field_name in INT_FIELDS[name]}
  cfg['hidden_act'] = field(given, 'hidden_act', where, 'str', defaults['hidden_act'])
  require(cfg['hidden_act'] in ACTIVATIONS, f'HF {where}hidden_act={cfg["hidden_act"]!r} is not '
          f'supported (only {", ".join(ACTIVATIONS)})')
  eps = field(given, 'layer_norm_eps', where, 'pos_number', defaults['layer_norm_eps'])
  require(abs(eps - 1e-5) < 1e-12, f'HF {where}layer_norm_eps={eps} is not supported (only 1e-5)')
  fields.divides(cfg['num_attention_heads'], cfg['hidden_size'], f'{where}num_attention_heads',
                 f'{where}hidden_size')
  if name == 'text':
    cfg['eos_token_id'] = field(given, 'eos_token_id', where, 'int', defaults['eos_token_id'])
    require(0 <= cfg['eos_token_id'] < cfg['vocab_size'], f'{where}eos_token_id='
            f'{cfg["eos_token_id"]} is not an id of the vocabulary (vocab_size {cfg["vocab_size"]})')
  else:
    fields.divides(cfg['patch_size'], cfg['image_size'], f'{where}patch_size', f'{where}image_size')
  return cfg


def config_from_arch(arch: dict, preprocessor: dict | None = None):
  """Our full config for an HF CLIP `config.json` (and its `preprocessor_config.json`)."""
  require(isinstance(arch, dict), 'an HF config.json holds a JSON object')
  model_type = field(arch, 'model_type', '', 'str', 'clip')
  require(model_type == 'clip',
          f'HF model_type {model_type!r} is not supported (only CLIPModel, "clip")')
  text, vision = _tower(arch, 'text'), _tower(arch, 'vision')
  require(text['hidden_act'] == vision['hidden_act'],
          f'HF towers use different activations ({text["hidden_act"]} / {vision["hidden_act"]}); '
          'this project has one model.activation')
  require(vision['num_channels'] == 3, 'only 3-channel images are supported')
  config = base_config()
  model = config.model
  model.variant = 'custom'
  model.custom = dict(
      patch=vision['patch_size'], image_width=vision['hidden_size'],
      image_depth=vision['num_hidden_layers'], image_heads=vision['num_attention_heads'],
      image_mlp=vision['intermediate_size'], text_width=text['hidden_size'],
      text_depth=text['num_hidden_layers'], text_heads=text['num_attention_heads'],
      text_mlp=text['intermediate_size'], embed_dim=field(arch, 'projection_dim', '', 'pos_int', 512))
  model.activation = ACTIVATIONS[vision['hidden_act']]
  model.image_size = vision['image_size']
  model.image_ln_pre = True
  preprocessor = preprocessor or {}
  where = 'preprocessor_config.'
  model.image_mean = tuple(field(preprocessor, 'image_mean', where, 'rgb', CLIP_MEAN))
  model.image_std = tuple(field(preprocessor, 'image_std', where, 'pos_rgb', CLIP_STD))
  model.vocab_size = text['vocab_size']
  model.context_length = text['max_position_embeddings']
  if text['eos_token_id'] == LEGACY_EOS:
    model.text_pool, model.text_eos_id = 'argmax', -1
  else:
    model.text_pool, model.text_eos_id = 'eos_id', text['eos_token_id']
  config.loss.max_logit_scale = 0.0  # Evaluate exactly the source's scale (no clamp).
  return config


def _block_rules(ours: str, theirs: str) -> list[Rule]:
  attn = f'{theirs}.self_attn'
  return (layer_norm_rules(f'{ours}/ln_attn', f'{theirs}.layer_norm1')
          + [Rule(f'{ours}/attn/qkv/kernel',
                  tuple(f'{attn}.{n}_proj.weight' for n in 'qkv'), 'qkv'),
             Rule(f'{ours}/attn/qkv/bias', tuple(f'{attn}.{n}_proj.bias' for n in 'qkv'),
                  'qkv_bias')]
          + linear_rules(f'{ours}/attn/out', f'{attn}.out_proj')
          + layer_norm_rules(f'{ours}/ln_mlp', f'{theirs}.layer_norm2')
          + linear_rules(f'{ours}/mlp/fc1', f'{theirs}.mlp.fc1')
          + linear_rules(f'{ours}/mlp/fc2', f'{theirs}.mlp.fc2'))


def rules(config) -> list[Rule]:
  """Our parameter <-> HF state-dict key, for every parameter but the patch bias."""
  size = model_size(config.model)
  vis, txt = 'vision_model', 'text_model'
  out = [Rule('img/patch_embed/kernel', (f'{vis}.embeddings.patch_embedding.weight',), 'patch'),
         Rule('img/cls_token', (f'{vis}.embeddings.class_embedding',), 'cls'),
         Rule('img/pos_embed', (f'{vis}.embeddings.position_embedding.weight',), 'copy'),
         Rule('img/proj/kernel', ('visual_projection.weight',), 'linear'),
         Rule('txt/token_embed/embedding', (f'{txt}.embeddings.token_embedding.weight',), 'copy'),
         Rule('txt/pos_embed', (f'{txt}.embeddings.position_embedding.weight',), 'copy'),
         Rule('txt/proj/kernel', ('text_projection.weight',), 'linear'),
         Rule('log_logit_scale', ('logit_scale',), 'copy')]
  out += layer_norm_rules('img/ln_pre', f'{vis}.pre_layrnorm')  # sic: HF's spelling
  out += layer_norm_rules('img/encoder/ln_final', f'{vis}.post_layernorm')
  out += layer_norm_rules('txt/encoder/ln_final', f'{txt}.final_layer_norm')
  for i in range(size['image_depth']):
    out += _block_rules(f'img/encoder/blocks/{i}', f'{vis}.encoder.layers.{i}')
  for i in range(size['text_depth']):
    out += _block_rules(f'txt/encoder/blocks/{i}', f'{txt}.encoder.layers.{i}')
  return out


def arch_from_config(config, eos_id: int, bos_id: int | None, logit_scale: float) -> tuple[dict, dict]:
  """(`config.json`, `preprocessor_config.json`) contents for our config."""
  size, model = model_size(config.model), config.model
  common = dict(hidden_act=model.activation, layer_norm_eps=1e-5)
  text = dict(vocab_size=model.vocab_size, hidden_size=size['text_width'],
              intermediate_size=size['text_mlp'], num_hidden_layers=size['text_depth'],
              num_attention_heads=size['text_heads'],
              max_position_embeddings=model.context_length, eos_token_id=eos_id,
              bos_token_id=eos_id if bos_id is None else bos_id, pad_token_id=0,
              projection_dim=size['embed_dim'], model_type='clip_text_model', **common)
  vision = dict(hidden_size=size['image_width'], intermediate_size=size['image_mlp'],
                num_hidden_layers=size['image_depth'], num_attention_heads=size['image_heads'],
                num_channels=3, image_size=model.image_size, patch_size=size['patch'],
                projection_dim=size['embed_dim'], model_type='clip_vision_model', **common)
  arch = dict(architectures=['CLIPModel'], model_type='clip', projection_dim=size['embed_dim'],
              logit_scale_init_value=logit_scale, text_config=text, vision_config=vision,
              torch_dtype='float32')
  preprocessor = dict(
      image_processor_type='CLIPImageProcessor', do_resize=True,
      size={'shortest_edge': model.image_size}, resample=3, do_center_crop=True,
      crop_size={'height': model.image_size, 'width': model.image_size}, do_rescale=True,
      rescale_factor=1 / 255, do_normalize=True, image_mean=list(model.image_mean),
      image_std=list(model.image_std), do_convert_rgb=True)
  return arch, preprocessor

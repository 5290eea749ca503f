"""Named tower sizes. Pure Python (no jax import) so configs and validation can use it cheaply."""

# Each variant: image tower (patch, width, depth, heads, mlp), text tower (width, depth, heads, mlp),
# and the shared embedding size. Input sizes (image size, context, vocabulary) live in the config.
VARIANTS = {
    # CPU-minutes model of the demo.
    'demo': dict(patch=4, image_width=128, image_depth=4, image_heads=4, image_mlp=512,
                 text_width=128, text_depth=4, text_heads=4, text_mlp=512, embed_dim=128),
    # The benchmark's `tiny` (issue 3): ViT 256/6/4/1024, patch 8; text 256/6/4/1024; embedding 256.
    'tiny': dict(patch=8, image_width=256, image_depth=6, image_heads=4, image_mlp=1024,
                 text_width=256, text_depth=6, text_heads=4, text_mlp=1024, embed_dim=256),
    # OpenCLIP's ViT-B-32 / ViT-B-16 / ViT-L-14 (text 512/12/8 for B, 768/12/12 for L).
    'b32': dict(patch=32, image_width=768, image_depth=12, image_heads=12, image_mlp=3072,
                text_width=512, text_depth=12, text_heads=8, text_mlp=2048, embed_dim=512),
    'b16': dict(patch=16, image_width=768, image_depth=12, image_heads=12, image_mlp=3072,
                text_width=512, text_depth=12, text_heads=8, text_mlp=2048, embed_dim=512),
    'l14': dict(patch=14, image_width=1024, image_depth=24, image_heads=16, image_mlp=4096,
                text_width=768, text_depth=12, text_heads=12, text_mlp=3072, embed_dim=768),
    # SigLIP (Zhai et al. 2023; big_vision's ViT 'B/16' and 'So400m/14', OpenCLIP's
    # ViT-B-16-SigLIP / ViT-SO400M-14-SigLIP): text tower as wide as the image tower, embedding =
    # width. So400m's mlp 4304 is big_vision's shape-optimised size (not 4 x width).
    'siglip_b16': dict(patch=16, image_width=768, image_depth=12, image_heads=12, image_mlp=3072,
                       text_width=768, text_depth=12, text_heads=12, text_mlp=3072, embed_dim=768),
    'so400m': dict(patch=14, image_width=1152, image_depth=27, image_heads=16, image_mlp=4304,
                   text_width=1152, text_depth=27, text_heads=16, text_mlp=4304, embed_dim=1152),
    # ALIGN (Jia et al. 2021): EfficientNet image tower ('image_tower'), BERT-sized text tower
    # (bidirectional, [CLS] pooling: set by configs/align.py), embedding 640 (B7) / 1376 (L2).
    'align_b7': dict(image_tower='efficientnet-b7', text_width=768, text_depth=12, text_heads=12,
                     text_mlp=3072, embed_dim=640),
    'align_l2': dict(image_tower='efficientnet-l2', text_width=1024, text_depth=24,
                     text_heads=16, text_mlp=4096, embed_dim=1376),
    # The same family at CPU size: EfficientNet-B0 and a 4-layer, 128-wide text encoder.
    'align_tiny': dict(image_tower='efficientnet-b0', text_width=128, text_depth=4, text_heads=4,
                       text_mlp=512, embed_dim=128),
}


def image_tower_kind(size: dict) -> str:
  """'vit', or the EfficientNet scale ('b0'..'b7', 'l2') of an EfficientNet variant."""
  kind = size.get('image_tower', 'vit')
  return kind.split('-', 1)[1] if kind.startswith('efficientnet-') else kind


def get_variant(name: str) -> dict:
  """The size dict of a named variant, or a one-line error listing the known names."""
  if name not in VARIANTS:
    raise KeyError(f'unknown model variant {name!r}; known: {", ".join(sorted(VARIANTS))}')
  return dict(VARIANTS[name])


CUSTOM = 'custom'  # `model.variant='custom'`: sizes in `model.custom` (imported weights use it).
SIZE_KEYS = ('patch', 'image_width', 'image_depth', 'image_heads', 'image_mlp', 'text_width',
             'text_depth', 'text_heads', 'text_mlp', 'embed_dim')


def model_size(model_cfg) -> dict:
  """The tower sizes of `config.model`: a named variant, or `model.custom` for 'custom'."""
  if model_cfg.variant != CUSTOM:
    return get_variant(model_cfg.variant)
  size = dict(model_cfg.custom)
  missing = [key for key in SIZE_KEYS if key not in size]
  if missing:
    raise KeyError(f"model.variant 'custom' needs model.custom.{missing[0]} "
                   f'(sizes: {", ".join(SIZE_KEYS)})')
  return size

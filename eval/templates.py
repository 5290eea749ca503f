"""Prompt templates for zero-shot classification; `{c}` is replaced by the class name."""

from data import storage
from data.errors import ConfigError
from data.sources import parse_spec
from eval import benchmark_meta

# CLIP's 80 ImageNet prompts (Radford et al. 2021, the prompt-engineering notebook).
CLIP80 = (
    'a bad photo of a {c}.',
    'a photo of many {c}.',
    'a sculpture of a {c}.',
    'a photo of the hard to see {c}.',
    'a low resolution photo of the {c}.',
    'a rendering of a {c}.',
    'graffiti of a {c}.',
    'a bad photo of the {c}.',
    'a cropped photo of the {c}.',
    'a tattoo of a {c}.',
    'the embroidered {c}.',
    'a photo of a hard to see {c}.',
    'a bright photo of a {c}.',
    'a photo of a clean {c}.',
    'a photo of a dirty {c}.',
    'a dark photo of the {c}.',
    'a drawing of a {c}.',
    'a photo of my {c}.',
    'the plastic {c}.',
    'a photo of the cool {c}.',
    'a close-up photo of a {c}.',
    'a black and white photo of the {c}.',
    'a painting of the {c}.',
    'a painting of a {c}.',
    'a pixelated photo of the {c}.',
    'a sculpture of the {c}.',
    'a bright photo of the {c}.',
    'a cropped photo of a {c}.',
    'a plastic {c}.',
    'a photo of the dirty {c}.',
    'a jpeg corrupted photo of a {c}.',
    'a blurry photo of the {c}.',
    'a photo of the {c}.',
    'a good photo of the {c}.',
    'a rendering of the {c}.',
    'a {c} in a video game.',
    'a photo of one {c}.',
    'a doodle of a {c}.',
    'a close-up photo of the {c}.',
    'a photo of a {c}.',
    'the origami {c}.',
    'the {c} in a video game.',
    'a sketch of a {c}.',
    'a doodle of the {c}.',
    'a origami {c}.',
    'a low resolution photo of a {c}.',
    'the toy {c}.',
    'a rendition of the {c}.',
    'a photo of the clean {c}.',
    'a photo of a large {c}.',
    'a rendition of a {c}.',
    'a photo of a nice {c}.',
    'a photo of a weird {c}.',
    'a blurry photo of a {c}.',
    'a cartoon {c}.',
    'art of a {c}.',
    'a sketch of the {c}.',
    'a embroidered {c}.',
    'a pixelated photo of a {c}.',
    'itap of the {c}.',
    'a jpeg corrupted photo of the {c}.',
    'a good photo of a {c}.',
    'a plushie {c}.',
    'a photo of the nice {c}.',
    'a photo of the small {c}.',
    'a photo of the weird {c}.',
    'the cartoon {c}.',
    'art of the {c}.',
    'a drawing of the {c}.',
    'a photo of the large {c}.',
    'a black and white photo of a {c}.',
    'the plushie {c}.',
    'a dark photo of a {c}.',
    'itap of a {c}.',
    'graffiti of the {c}.',
    'a toy {c}.',
    'itap of my {c}.',
    'a photo of a cool {c}.',
    'a photo of a small {c}.',
    'a tattoo of the {c}.',
)

TEMPLATE_SETS = {
    'clip80': CLIP80,
    'classname': ('{c}',),
    'short': ('a photo of a {c}.', 'a picture of a {c}.', 'an image of a {c}.', 'itap of a {c}.'),
    # The embedded shapes corpus (its captions use these phrasings).
    'shapes': ('a photo of a {c}', 'a {c}', 'a picture of a {c}', 'a drawing of a {c}'),
}


def default_templates(spec: str) -> list[str]:
  """CLIP_benchmark's templates for a tfds set it knows (e.g. cifar10's 18), else CLIP's 80."""
  kind, arg, _ = parse_spec(spec)
  name = benchmark_meta.tfds_benchmark_name(arg) if kind == 'tfds' else None
  return benchmark_meta.builtin_templates(name) if name else list(CLIP80)


def load_templates(name_or_path: str) -> list[str]:
  """A built-in set by name, or a file (local or in a bucket) with one template per line using
  `{c}`."""
  if name_or_path in TEMPLATE_SETS:
    return list(TEMPLATE_SETS[name_or_path])
  storage.check_reachable(name_or_path, '--templates')
  if storage.is_file(name_or_path):
    text = storage.read_text(name_or_path)
    templates = [line.strip() for line in text.splitlines() if line.strip()]
    bad = [t for t in templates if '{c}' not in t]
    if bad or not templates:
      raise ConfigError(f'template file {name_or_path}: every line needs {{c}} (bad: {bad[:1]})')
    return templates
  raise ConfigError(f'unknown templates {name_or_path!r}: not a file, nor one of '
                    f'{", ".join(sorted(TEMPLATE_SETS))}')

"""The embedded default corpus: rendered shapes with captions, deterministic from a seed.

Every record is generated on demand from (seed, split, index), so the corpus needs no download and
no disk, and any index can be read in any order (what grain's global shuffle and exact resume need).
Splits: `train` (one caption per image), `zeroshot` (a class label: "<colour> <shape>") and
`retrieval` (several captions per image).
"""

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ('circle', 'square', 'triangle', 'diamond', 'cross', 'ring')
COLOURS = {
    'red': (220, 40, 40), 'green': (40, 180, 60), 'blue': (50, 90, 235), 'yellow': (235, 220, 50),
    'purple': (150, 60, 200), 'orange': (245, 140, 30), 'white': (235, 235, 235),
    'cyan': (40, 210, 220),
}
SIZES = ('small', 'large')
POSITIONS = {'top left': (0.3, 0.3), 'top right': (0.7, 0.3), 'bottom left': (0.3, 0.7),
             'bottom right': (0.7, 0.7), 'center': (0.5, 0.5)}
TEMPLATES = (
    'a {size} {colour} {shape}',
    'a {colour} {shape} in the {position}',
    'a photo of a {colour} {shape}',
    'a {colour} {shape} on a dark background',
    'a picture of a {size} {shape} that is {colour}',
    'the {shape} is {colour} and {size}',
    'a {shape} coloured {colour} at the {position}',
    '{size} {colour} {shape} , {position}',
    'there is a {colour} {shape} near the {position}',
    'a drawing of a {size} {colour} {shape}',
)
SPLITS = {'train': (0, 200_000), 'zeroshot': (1, 960), 'retrieval': (2, 500)}
CAPTIONS_PER_RETRIEVAL_IMAGE = 5
NUM_CLASSES = len(COLOURS) * len(SHAPES)  # labels never depend on names a caller assigns


def classnames() -> list[str]:
  """Zero-shot class names, label = colour index * len(SHAPES) + shape index."""
  return [f'{colour} {shape}' for colour in COLOURS for shape in SHAPES]


def vocabulary() -> list[str]:
  """Every word any caption or class name can contain, sorted."""
  words = set()
  for text in TEMPLATES + ('a photo of a {c} .', 'a {c}'):
    words.update(w for w in text.split() if not w.startswith('{'))
  for group in (SHAPES, COLOURS, SIZES, POSITIONS):
    for item in group:
      words.update(item.split())
  return sorted(words)


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
  if shape == 'square':
    return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
  if shape == 'triangle':
    return [(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)]
  if shape == 'diamond':
    return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
  t = r / 3  # cross
  return [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t), (cx + r, cy + t),
          (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r), (cx - t, cy + t), (cx - r, cy + t),
          (cx - r, cy - t), (cx - t, cy - t)]


def render(shape: str, colour: str, size: str, position: str, rng: np.random.Generator,
           image_size: int) -> np.ndarray:
  """One uint8 [S, S, 3] image: a jittered shape on a noisy dark background."""
  background = rng.integers(0, 70, size=3)
  noise = rng.integers(-12, 13, size=(image_size, image_size, 3))
  canvas = np.clip(background + noise, 0, 255).astype(np.uint8)
  image = Image.fromarray(canvas)
  draw = ImageDraw.Draw(image)
  fx, fy = POSITIONS[position]
  cx = (fx + rng.uniform(-0.06, 0.06)) * image_size
  cy = (fy + rng.uniform(-0.06, 0.06)) * image_size
  r = (0.12 if size == 'small' else 0.22) * image_size * rng.uniform(0.9, 1.1)
  fill = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in COLOURS[colour])
  if shape == 'circle':
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
  elif shape == 'ring':
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(2, int(r / 3)))
  else:
    draw.polygon(_polygon(shape, cx, cy, r), fill=fill)
  return np.asarray(image)


class ShapesSource:
  """A random-access source of one split (grain's RandomAccessDataSource protocol)."""

  def __init__(self, split: str = 'train', image_size: int = 64, seed: int = 0,
               size: int | None = None):
    if split not in SPLITS:
      raise ValueError(f'unknown shapes split {split!r}; known: {", ".join(SPLITS)}')
    self.split, self.image_size, self.seed = split, image_size, seed
    self._code, default_size = SPLITS[split]
    self._size = default_size if size is None else size
    self.name = f'shapes_{split}'
    self.classnames = classnames()

  def __len__(self) -> int:
    return self._size

  def labels(self) -> list[int]:
    """Labels of the zeroshot split without rendering (it cycles through the classes)."""
    if self.split != 'zeroshot':
      return [self[i]['label'] for i in range(len(self))]
    return [i % NUM_CLASSES for i in range(len(self))]

  def text(self, index: int) -> list[str]:
    """The caption(s) of record `index` (rendering is cheap here, so this reuses it)."""
    record = self[index]
    return record.get('captions') or [record['caption']]

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < self._size:
      raise IndexError(index)
    rng = np.random.default_rng((self.seed, self._code, int(index)))
    if self.split == 'zeroshot':  # Balanced classes: index cycles through them.
      label = int(index) % NUM_CLASSES
      colour, shape = list(COLOURS)[label // len(SHAPES)], SHAPES[label % len(SHAPES)]
    else:
      colour = list(COLOURS)[rng.integers(len(COLOURS))]
      shape = SHAPES[rng.integers(len(SHAPES))]
      label = list(COLOURS).index(colour) * len(SHAPES) + SHAPES.index(shape)
    size = SIZES[rng.integers(len(SIZES))]
    position = list(POSITIONS)[rng.integers(len(POSITIONS))]
    image = render(shape, colour, size, position, rng, self.image_size)
    fields = dict(shape=shape, colour=colour, size=size, position=position)
    record = {'image': image, 'key': f'{self.name}/{index}', 'label': label}
    if self.split == 'retrieval':
      chosen = rng.choice(len(TEMPLATES), CAPTIONS_PER_RETRIEVAL_IMAGE, replace=False)
      record['captions'] = [TEMPLATES[i].format(**fields) for i in chosen]
    else:
      record['caption'] = TEMPLATES[rng.integers(len(TEMPLATES))].format(**fields)
    return record

"""Fixed embeddings for the CLIP_benchmark metric-parity reference (numpy only: imported by the
reference script in the optional clip-benchmark environment and by the test in ours).

Two families. `continuous`: random unit vectors, no ties. `ties`: vectors with four entries of
+-1/2 out of 16 (exactly unit norm, every dot product a multiple of 1/4 and exact in float32, so
normalising and scoring are exact in both libraries and ties are true ties): most scores tie.
The tie cases come in two sizes because torch's CPU topk takes two paths (std::partial_sort when
k * 64 <= n, else std::nth_element); neither orders equal scores by any index rule.
"""

import hashlib

import numpy as np

DIM = 16


def _unit(x: np.ndarray) -> np.ndarray:
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _continuous(rng: np.random.Generator, n: int, near: np.ndarray | None = None) -> np.ndarray:
  """Random unit vectors; with `near`, noisy copies of its rows (so the metrics are not ~0)."""
  x = rng.normal(size=(n, DIM))
  return _unit(x if near is None else near + 2.5 * x / np.sqrt(DIM))


def _quantised(rng: np.random.Generator, n: int, near: np.ndarray | None = None) -> np.ndarray:
  """Four entries of +-1/2; with `near`, half the rows are its rows with one entry moved
  (score 3/4 with their own row, tied with the many other rows that share three entries)."""
  x = np.zeros((n, DIM), np.float32)
  for row in x:
    row[rng.choice(DIM, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
  if near is not None:
    for i in np.flatnonzero(rng.random(n) < 0.5):
      x[i] = near[i]
      x[i, rng.choice(np.flatnonzero(x[i]))] = 0
      x[i, rng.choice(np.flatnonzero(x[i] == 0))] = rng.choice([-0.5, 0.5])
  return x


def _zeroshot(seed: int, classes: int, images: int, make) -> dict:
  rng = np.random.default_rng(seed)
  class_emb = make(rng, classes)
  labels = rng.integers(0, classes, images).astype(np.int64)
  return {'kind': 'zeroshot', 'class_emb': class_emb, 'labels': labels,
          'image_emb': make(rng, images, class_emb[labels])}


def _retrieval(seed: int, images: int, make) -> dict:
  rng = np.random.default_rng(seed)
  # Captions listed image by image, as CLIP_benchmark and eval/retrieval.py both list them (the
  # caption order decides which of two equal-scored captions ranks first).
  owner = np.repeat(np.arange(images), rng.integers(1, 4, images))
  image_emb = make(rng, images)
  return {'kind': 'retrieval', 'image_emb': image_emb, 'text_owner': owner.astype(np.int64),
          'text_emb': make(rng, len(owner), image_emb[owner])}


def cases() -> dict[str, dict]:
  """name -> {'kind': 'zeroshot'|'retrieval', arrays...}, the same on every run."""
  return {
      'zeroshot_continuous': _zeroshot(0, 10, 60, _continuous),
      'zeroshot_ties': _zeroshot(1, 400, 600, _quantised),
      'zeroshot_ties_small': _zeroshot(2, 12, 300, _quantised),
      'retrieval_continuous': _retrieval(3, 40, _continuous),
      'retrieval_ties': _retrieval(4, 700, _quantised),
      'retrieval_ties_small': _retrieval(5, 40, _quantised),
  }


def fingerprint(case: dict) -> str:
  """sha256 of a case's arrays: the test checks it regenerated the inputs the reference saw."""
  digest = hashlib.sha256()
  for key in sorted(k for k in case if k != 'kind'):
    digest.update(key.encode() + np.ascontiguousarray(case[key]).tobytes())
  return digest.hexdigest()

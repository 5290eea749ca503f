"""The metric-parity reference: CLIP_benchmark's own metric code on tests/metric_parity_cases.py.

Runs in an optional environment (never in CI, which has no torch), e.g. the peers one plus the
package (its other requirements, open_clip/transformers/webdataset/pycocoevalcap, only serve model
and data loading, which this script does not use):
  python3 -m venv /tmp/peers && /tmp/peers/bin/pip install -r benchmarks/requirements-peers.txt
  /tmp/peers/bin/pip install scikit-learn==1.9.1 numpy==2.3.5 \
      && /tmp/peers/bin/pip install --no-deps clip-benchmark==1.6.2
(numpy 2.3: clip-benchmark 1.6.2's accuracy() calls float() on a 1-element array, which numpy 2.4
refuses.) The reference was made so, with the versions it records.
  /tmp/peers/bin/python tests/data/make_clip_benchmark_refs.py   # writes tests/data/clip_benchmark/

The package's `evaluate` functions run unchanged on a model whose encoders return the fixed
embeddings: a "tokenizer" maps the string "i" to row i of the text embeddings, so class i's one
prompt ('{c}' with class name "i") and caption j are looked up, and the image batches are the image
embeddings themselves. Everything after the encoders (normalisation, the averaged class
classifier, the 100x logits, topk, argmax, sklearn's balanced accuracy, the retrieval recall) is
the package's.
"""

import json
import os
import sys
from types import SimpleNamespace

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # the repository, for tests.*

from tests.metric_parity_cases import cases, fingerprint  # noqa: E402

BATCH = 100
KS = [1, 5, 10]


class Encoders(torch.nn.Module):
  """encode_image / encode_text return their input: the batches already are embeddings."""

  def encode_image(self, x):
    return x

  def encode_text(self, x):
    return x


def lookup(table: np.ndarray):
  """A tokenizer whose 'token ids' for the string "i" are row i of `table`."""
  rows = torch.from_numpy(table)
  return lambda texts: rows[[int(t) for t in texts]]


class Loader:
  """The batches, with the `dataset.classes` CLIP_benchmark reads for its acc5 rule."""

  def __init__(self, batches, classes=None):
    self.batches, self.dataset = batches, SimpleNamespace(classes=classes)

  def __iter__(self):
    return iter(self.batches)


def zeroshot(case: dict) -> dict:
  from clip_benchmark.metrics import zeroshot_classification
  images, labels = torch.from_numpy(case['image_emb']), torch.from_numpy(case['labels'])
  classes = [str(i) for i in range(len(case['class_emb']))]
  batches = [(images[i:i + BATCH], labels[i:i + BATCH]) for i in range(0, len(images), BATCH)]
  return zeroshot_classification.evaluate(
      Encoders(), Loader(batches, classes), lookup(case['class_emb']), classes, ['{c}'], 'cpu',
      amp=False)


def retrieval(case: dict) -> dict:
  from clip_benchmark.metrics import zeroshot_retrieval
  images, owner = torch.from_numpy(case['image_emb']), case['text_owner']
  captions = [[str(j) for j in np.flatnonzero(owner == i)] for i in range(len(images))]
  assert [int(j) for c in captions for j in c] == list(range(len(owner)))  # image by image
  batches = [(images[i:i + BATCH], captions[i:i + BATCH]) for i in range(0, len(images), BATCH)]
  return zeroshot_retrieval.evaluate(Encoders(), Loader(batches), lookup(case['text_emb']), 'cpu',
                                     amp=False, recall_k_list=KS)


def main() -> None:
  import clip_benchmark  # noqa: F401
  import sklearn
  from importlib.metadata import version
  out = {'versions': {name: version(name) for name in
                      ('clip-benchmark', 'torch', 'scikit-learn', 'numpy')}, 'cases': {}}
  for name, case in cases().items():
    metrics = zeroshot(case) if case['kind'] == 'zeroshot' else retrieval(case)
    out['cases'][name] = {'kind': case['kind'], 'fingerprint': fingerprint(case),
                          'metrics': {k: float(v) for k, v in metrics.items()}}
    print(name, out['cases'][name]['metrics'])
  os.makedirs(os.path.join(HERE, 'clip_benchmark'), exist_ok=True)
  with open(os.path.join(HERE, 'clip_benchmark', 'metrics.json'), 'w') as f:
    json.dump(out, f, indent=1)
    f.write('\n')


if __name__ == '__main__':
  main()

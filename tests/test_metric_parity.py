"""Our zero-shot and retrieval metrics equal CLIP_benchmark's, value for value.

The reference (tests/data/clip_benchmark/metrics.json) was computed by the clip-benchmark package
itself on tests/metric_parity_cases.py; tests/data/make_clip_benchmark_refs.py regenerates it in an
optional torch environment. Here, without torch, eval/zeroshot_lib.py and eval/retrieval_lib.py
recompute it from the same embeddings. Every value is equal exactly, except a top-k metric whose
exact ties straddle the k-th place: torch.topk orders equal scores by no rule (see the modules'
docstrings), so there both values must lie within the all-ties-lost / all-ties-won bounds.
"""

import json
import os

import numpy as np
import pytest

from eval.retrieval_lib import retrieval_metrics
from eval.zeroshot_lib import zeroshot_metrics
from tests.metric_parity_cases import cases, fingerprint

REFERENCE = os.path.join(os.path.dirname(__file__), 'data', 'clip_benchmark', 'metrics.json')
CASES = cases()
with open(REFERENCE) as f:
  REF = json.load(f)


def ours(case: dict) -> dict:
  if case['kind'] == 'zeroshot':
    return zeroshot_metrics(case['image_emb'], case['labels'], case['class_emb'])
  return retrieval_metrics(case['image_emb'], case['text_emb'], case['text_owner'], block=64,
                           chunk=96)


def _above_and_tied(scores, best, positive):
  """Per query: negatives scored above its best positive, and negatives tied with it."""
  return (np.sum((scores > best) & ~positive, axis=1),
          np.sum((scores == best) & ~positive, axis=1))


def tie_bounds(case: dict) -> tuple[dict, dict]:
  """Each top-k metric with every tie lost and with every tie won (brute force, full matrix)."""
  low, high = {}, {}
  if case['kind'] == 'zeroshot':
    s = case['image_emb'] @ case['class_emb'].T
    positive = np.arange(s.shape[1])[None, :] == case['labels'][:, None]
    above, tied = _above_and_tied(s, s[positive][:, None], positive)
    for k in (1, 5):
      low[f'acc{k}'], high[f'acc{k}'] = np.mean(above + tied < k), np.mean(above < k)
    return low, high
  s = case['image_emb'] @ case['text_emb'].T
  positive = case['text_owner'][None, :] == np.arange(len(s))[:, None]
  for name, scores, pos in (('text', s, positive), ('image', s.T, positive.T)):
    best = np.where(pos, scores, -np.inf).max(axis=1, keepdims=True)
    above, tied = _above_and_tied(scores, best, pos)
    for k in (1, 5, 10):
      key = f'{name}_retrieval_recall@{k}'
      low[key], high[key] = np.mean(above + tied < k), np.mean(above < k)
  return low, high


def test_reference_covers_every_case_and_its_inputs():
  assert set(REF['cases']) == set(CASES)
  for name, case in CASES.items():
    assert REF['cases'][name]['fingerprint'] == fingerprint(case), f'{name}: inputs changed'


@pytest.mark.parametrize('name', sorted(CASES))
def test_metrics_equal_clip_benchmark(name):
  want, got = REF['cases'][name]['metrics'], ours(CASES[name])
  low, high = tie_bounds(CASES[name])
  exact = [k for k in want if k not in low or low[k] == high[k]]
  assert {k: got[k] for k in exact} == {k: want[k] for k in exact}
  for key in set(want) - set(exact):  # ties decide: both within the bounds
    assert low[key] - 1e-6 <= want[key] <= high[key] + 1e-6, key
    assert low[key] - 1e-6 <= got[key] <= high[key] + 1e-6, key
  if 'continuous' in name:
    assert set(exact) == set(want)  # no ties: every value exactly equal
  else:
    assert set(exact) != set(want)  # the tie cases do have ties that decide hits
  if 'mean_per_class_recall' in want:
    assert 'mean_per_class_recall' in exact

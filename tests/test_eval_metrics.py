"""Eval metrics against brute-force numpy references (ties, several captions per image)."""

import numpy as np
import pytest

from eval.retrieval_lib import retrieval_metrics, retrieval_ranks
from eval.zeroshot_lib import zeroshot_metrics


def brute_force_ranks(img, txt, owner):
  """Stable descending sort of the full matrix; rank = first position holding a positive."""
  s = img.astype(np.float32) @ txt.astype(np.float32).T
  rank_i2t = []
  for q in range(len(img)):
    order = np.argsort(-s[q], kind='stable')
    rank_i2t.append(1 + np.flatnonzero(owner[order] == q)[0])
  rank_t2i = []
  for j in range(len(txt)):
    order = np.argsort(-s[:, j], kind='stable')
    rank_t2i.append(1 + np.flatnonzero(order == owner[j])[0])
  return np.array(rank_i2t), np.array(rank_t2i)


def _unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize('block, chunk', [(4, 7), (64, 512), (5, 3)])
def test_ranks_equal_brute_force_with_ties_and_uneven_captions(block, chunk):
  rng = np.random.default_rng(0)
  n_img = 23
  counts = rng.integers(1, 5, n_img)  # uneven captions per image
  owner = np.repeat(np.arange(n_img), counts)
  rng.shuffle(owner)
  # Few distinct small-integer vectors: many ties, and every dot product is exact in float32
  # (so ties are true ties in any summation order, in the reference and in the blocks alike).
  basis = rng.integers(-2, 3, size=(6, 8)).astype(np.float32)
  img = basis[rng.integers(0, 6, n_img)]
  txt = basis[rng.integers(0, 6, len(owner))]
  txt[:5] = img[owner[:5]]  # some perfect pairs
  got = retrieval_ranks(img, txt, owner, block=block, chunk=chunk)
  want = brute_force_ranks(img, txt, owner)
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_array_equal(got[1], want[1])


def test_random_embeddings_equal_brute_force():
  rng = np.random.default_rng(1)
  img = _unit(rng.normal(size=(50, 16)).astype(np.float32))
  owner = np.repeat(np.arange(50), 3)
  txt = _unit(img[owner] + 0.9 * rng.normal(size=(150, 16)).astype(np.float32))
  got = retrieval_ranks(img, txt, owner, block=16, chunk=40)
  want = brute_force_ranks(img, txt, owner)
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_array_equal(got[1], want[1])
  metrics = retrieval_metrics(img, txt, owner, block=16, chunk=40)
  # Recalls are float32 fractions, as CLIP_benchmark's float32 mean gives them.
  assert metrics['text_retrieval_recall@1'] == np.float32(np.sum(want[0] <= 1)) / np.float32(50)
  assert metrics['image_retrieval_recall@5'] == np.float32(np.sum(want[1] <= 5)) / np.float32(150)
  assert metrics['image_retrieval_mean_rank'] == np.mean(want[1])
  assert 0 < metrics['image_retrieval_recall@1'] < metrics['image_retrieval_recall@10'] < 1


def test_perfect_embeddings_give_recall_one():
  img = np.eye(12, dtype=np.float32)
  owner = np.repeat(np.arange(12), 2)
  metrics = retrieval_metrics(img, img[owner], owner, block=5, chunk=7)
  for key, value in metrics.items():
    assert value == 1.0, key


def test_zeroshot_metrics_equal_brute_force():
  rng = np.random.default_rng(2)
  classes = _unit(rng.normal(size=(7, 8)))
  labels = np.array([0, 0, 1, 2, 3, 3, 3, 4, 5, 6, 6, 2])
  images = _unit(classes[labels] + 0.8 * rng.normal(size=(len(labels), 8)))
  metrics = zeroshot_metrics(images, labels, classes)
  scores = images @ classes.T
  pred = scores.argmax(axis=1)
  assert metrics['acc1'] == np.mean(pred == labels)
  top5 = np.argsort(-scores, axis=1)[:, :5]
  assert metrics['acc5'] == np.mean([l in t for l, t in zip(labels, top5)])
  recalls = [np.mean(pred[labels == c] == c) for c in np.unique(labels)]
  assert metrics['mean_per_class_recall'] == pytest.approx(np.mean(recalls))
  assert metrics['confusion'].sum() == len(labels)
  assert np.trace(metrics['confusion']) == np.sum(pred == labels)
  assert 'acc5' not in zeroshot_metrics(images, labels % 3, classes[:3])


def test_template_sets():
  from eval.templates import load_templates
  assert len(load_templates('clip80')) == 80 and len(set(load_templates('clip80'))) == 80
  assert load_templates('classname') == ['{c}']

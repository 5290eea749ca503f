"""Search, hubness reduction and binary codes against direct numpy computations."""

import json

import numpy as np
import pytest

from data.errors import ConfigError
from eval import binary_codes, hubness, search_index, search_lib
from eval.retrieval_lib import retrieval_ranks


def brute_topk(queries, index, k):
  """Full stable sort by descending score: ties by lower index."""
  scores = queries.astype(np.float64) @ index.T.astype(np.float64)
  order = np.argsort(-scores, axis=1, kind='stable')[:, :k]
  return np.take_along_axis(scores, order, 1), order


def exact_index(n=203, d=8, seed=0):
  """Rows of multiples of 1/4 (dot products exact in float32), with duplicated rows for ties."""
  rng = np.random.default_rng(seed)
  index = rng.integers(-4, 5, (n, d)).astype(np.float32) / 4
  index[150:160] = index[3]  # ten exact ties with row 3
  index[170] = index[40]
  return index


def test_chunked_exact_search_equals_brute_force_with_ties():
  index = exact_index()
  queries = np.concatenate([index[[3, 40, 7]], np.round(np.random.default_rng(1).normal(
      size=(5, 8)) * 4) / 4]).astype(np.float32)
  want_s, want_i = brute_topk(queries, index, 15)
  for chunk in (1, 7, 64, 1000):
    scores, ids = search_lib.topk_chunks(queries, search_lib.chunked(index, chunk), 15)
    np.testing.assert_array_equal(ids, want_i)
    np.testing.assert_array_equal(scores, want_s)
  assert list(ids[0, :11]) == [3, *range(150, 160)]  # the ties, in index order
  for k in (1, 5, 11, 12):  # a tie across the k-th place: the lowest ids of the tie are kept
    np.testing.assert_array_equal(search_lib.topk_chunks(queries, [index], k)[1], want_i[:, :k])
  assert list(search_lib.exact_search(queries, index, 500)[1][0]) == list(
      np.argsort(-(queries[0] @ index.T), kind='stable'))  # k > n: every row


def test_prefix_compose_and_adaptive_search():
  rng = np.random.default_rng(2)
  index = search_lib.normalize(rng.normal(size=(300, 32)))
  queries = search_lib.normalize(rng.normal(size=(6, 32)))
  # A prefix search is an exact search of the re-normalised truncations.
  trunc = index[:, :8] / np.linalg.norm(index[:, :8], axis=1, keepdims=True)
  qt = queries[:, :8] / np.linalg.norm(queries[:, :8], axis=1, keepdims=True)
  np.testing.assert_array_equal(search_lib.exact_search(queries, index, 10, 50, dims=8)[1],
                                brute_topk(qt, trunc, 10)[1])
  a, b = rng.normal(size=(1, 32)), rng.normal(size=(1, 32))
  summed = a / np.linalg.norm(a) + b / np.linalg.norm(b)
  np.testing.assert_allclose(search_lib.compose(a, b), summed / np.linalg.norm(summed), rtol=1e-6)
  # Adaptive: rerank of the prefix shortlist, computed directly.
  scores, ids = search_lib.adaptive_search(queries, index, 5, shortlist_dims=8, shortlist=20,
                                           chunk=64)
  shortlist = brute_topk(qt, trunc, 20)[1]
  for q in range(6):
    full = queries[q] @ index[shortlist[q]].T
    order = np.lexsort((shortlist[q], -full))[:5]
    np.testing.assert_array_equal(ids[q], shortlist[q][order])
  exact = brute_topk(queries, index, 5)[1]
  want = np.mean([len(set(i) & set(e)) / 5 for i, e in zip(ids, exact)])
  assert search_lib.recall_vs_exact(ids, exact) == pytest.approx(want)
  # A shortlist of the whole index is exact search.
  assert search_lib.recall_vs_exact(search_lib.adaptive_search(queries, index, 5, 8, 300)[1],
                                    exact) == 1.0


def write_fake_index(path, index, keys, chunk_rows, max_chunks=None, processes=1):
  """Writes `index` through the real writer; each of `processes` writes its own rows' keys."""
  manifest = search_index.start_or_resume(str(path), {'what': 'test'}, len(index), chunk_rows, 0)
  for process in reversed(range(processes)):  # process 0 last: it writes the chunk and manifest
    def embed_chunk(start, stop, process=process):
      mine = range(start + process, stop, processes)
      return index[start:stop], {r: keys[r] for r in mine}
    written = search_index.write_index(str(path), json.loads(json.dumps(manifest)) if process
                                       else manifest, embed_chunk, process, lambda name: None,
                                       lambda e: e, max_chunks)
  return written


def test_index_in_shards_resumes_after_a_kill_and_searches_exactly(tmp_path):
  index = exact_index(n=203)
  keys = [f'item/{i}' for i in range(203)]
  # 203 rows in chunks of 50: 5 chunks; killed after 2 (the manifest lists 2, a 3rd chunk's
  # files are half written, as a kill between files leaves them).
  assert write_fake_index(tmp_path, index, keys, 50, max_chunks=2, processes=2) == 2
  manifest = search_index.read_manifest(str(tmp_path))
  assert [c['start'] for c in manifest['chunks']] == [0, 50] and not manifest['complete']
  search_index.save_npy(str(tmp_path / 'chunk_00002.keys.p1.npy'), np.array(['stale']))
  with pytest.raises(ConfigError, match='unfinished'):
    search_index.open_index(str(tmp_path))
  with pytest.raises(ConfigError, match='another chunk_rows'):
    search_index.start_or_resume(str(tmp_path), {'what': 'test'}, 203, 64, 0)
  assert write_fake_index(tmp_path, index, keys, 50, processes=2) == 3  # only the missing ones
  manifest = search_index.open_index(str(tmp_path))
  assert manifest['count'] == 203 and len(manifest['chunks']) == 5
  assert list(search_index.keys(str(tmp_path), manifest)) == keys
  stored = np.concatenate(list(search_index.chunks(str(tmp_path), manifest)))
  np.testing.assert_array_equal(stored, index)
  np.testing.assert_array_equal(search_index.rows(str(tmp_path), manifest, np.array([[202, 0]])),
                                index[[[202, 0]]])
  text_q = index[[3, 11]]
  image_q = index[[40]]
  composed = search_lib.compose(index[[3]], index[[40]])
  for queries in (text_q, image_q, composed):
    scores, ids = search_lib.topk_chunks(queries, search_index.chunks(str(tmp_path), manifest), 12)
    want_s, want_i = brute_topk(queries, index, 12)
    np.testing.assert_array_equal(ids, want_i)
    np.testing.assert_allclose(scores, want_s, rtol=1e-6)


def test_hamming_ranking_equals_numpy_with_ties():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(120, 40)).astype(np.float32)
  x[60:70] = x[5]  # identical codes: ties
  x[80, :13] = x[5, :13] * 2.0  # same signs on the first 13 dims only
  for bits in (13, 40):
    codes = binary_codes.pack(x, bits)
    assert codes.shape == (120, -(-bits // 8))
    bits_q = np.unpackbits(codes[[5, 9]], axis=1)[:, :bits]
    bits_g = np.unpackbits(codes, axis=1)[:, :bits]
    want = (bits_q[:, None, :] != bits_g[None, :, :]).sum(-1)
    np.testing.assert_array_equal(binary_codes.hamming(codes[[5, 9]], codes), want)
    d, ids = binary_codes.hamming_topk(codes[[5, 9]], search_lib.chunked(codes, 17), 15)
    order = np.argsort(want, axis=1, kind='stable')[:, :15]
    np.testing.assert_array_equal(ids, order)
    np.testing.assert_array_equal(d, np.take_along_axis(want, order, 1))
    # ±1 vectors rank exactly as Hamming distance: dot = bits - 2 * hamming.
    s = binary_codes.signs(x, bits)
    np.testing.assert_array_equal(s[[5, 9]] @ s.T, bits - 2 * want)
  assert list(binary_codes.hamming_topk(binary_codes.pack(x[[5]], 13),
                                        [binary_codes.pack(x, 13)], 12)[1][0]) == [
                                            5, *range(60, 70), 80]
  assert list(binary_codes.hamming_topk(binary_codes.pack(x[[5]], 13),
                                        [binary_codes.pack(x, 13)], 6)[1][0]) == [5, *range(60, 65)]
  with pytest.raises(ConfigError, match='pick 1..40'):
    binary_codes.pack(x, 41)


def test_binary_rerank_ranks_equal_a_direct_computation():
  rng = np.random.default_rng(4)
  img = search_lib.normalize(rng.normal(size=(30, 16)))
  owner = np.repeat(np.arange(30), 2)
  txt = search_lib.normalize(img[owner] + rng.normal(size=(60, 16)))
  ic, tc = binary_codes.pack(img, 16), binary_codes.pack(txt, 16)
  for rerank in (0, 5, 60):
    ranks = binary_codes.reranked_ranks(tc, ic, txt, img, owner, np.arange(30), rerank, block=7)
    for q in range(60):
      d = binary_codes.hamming(tc[[q]], ic)[0]
      order = list(np.argsort(d, kind='stable'))
      head = sorted(order[:rerank], key=lambda i: (-float(txt[q] @ img[i]), i))
      assert ranks[q] == (head + order[rerank:]).index(owner[q]) + 1
  # rerank 0 is the pure Hamming ranking, which the float ranker gives on ±1 vectors.
  ranks0 = binary_codes.reranked_ranks(tc, ic, txt, img, owner, np.arange(30), 0)
  np.testing.assert_array_equal(ranks0, retrieval_ranks(binary_codes.signs(img, 16),
                                                        binary_codes.signs(txt, 16), owner)[1])


def published_inverted_softmax(test_sims, bank_sims, beta):
  """Smith et al. 2017 as QB-Norm's code writes it: exp(beta S) / sum over the bank."""
  return np.exp(beta * test_sims) / np.sum(np.exp(beta * bank_sims), axis=0)


def published_qb_norm(test_sims, bank_sims, beta, k):
  """Bogolin et al. 2022, dynamic inverted softmax, transcribed from the paper's algorithm."""
  activated = np.unique(np.argsort(-bank_sims, axis=1, kind='stable')[:, :k].ravel())
  out = test_sims.copy()
  rows = np.isin(np.argmax(test_sims, axis=1), activated)
  out[rows] = published_inverted_softmax(test_sims[rows], bank_sims, beta)
  return out, rows


def hub_data(seed=6):
  rng = np.random.default_rng(seed)
  gallery = search_lib.normalize(rng.normal(size=(40, 12)))
  gallery[:3] = search_lib.normalize(gallery[:3] + 2 * np.ones(12))  # three hubs
  # Half the queries lean towards the hubs; the bank does not (so QB-Norm re-scores only some).
  queries = search_lib.normalize(rng.normal(size=(25, 12)) + 0.8 * (np.arange(25) % 2)[:, None])
  bank = search_lib.normalize(rng.normal(size=(30, 12)))
  return queries, gallery, bank


@pytest.mark.parametrize('method', ['inverted_softmax', 'qb_norm'])
def test_hubness_scores_equal_the_published_formulas(method):
  queries, gallery, bank = hub_data()
  beta, k = 20.0, 2
  test_sims = (queries @ gallery.T).astype(np.float64)
  bank_sims = (bank @ gallery.T).astype(np.float64)
  ours = hubness.scores(method, queries, gallery, bank, beta, k)
  if method == 'inverted_softmax':
    want, rows = published_inverted_softmax(test_sims, bank_sims, beta), np.ones(25, bool)
  else:
    want, rows = published_qb_norm(test_sims, bank_sims, beta, k)
    assert 0 < rows.sum() < 25  # both kinds of query occur
  np.testing.assert_allclose(np.exp(ours[rows]), want[rows], rtol=1e-4)
  np.testing.assert_allclose(ours[~rows] / beta, want[~rows], rtol=1e-5, atol=1e-6)
  # The retrieval job ranks through augmented embeddings: same ranks as the formula's scores.
  q, g = hubness.augment(method, queries, gallery, bank, beta, k)
  owner = np.arange(25) % 40
  ranks = retrieval_ranks(g, q, owner)[1]
  want_ranks = [int(np.sum(want[j] > want[j, owner[j]])) + 1 for j in range(25)]
  np.testing.assert_array_equal(ranks, want_ranks)


def test_k_occurrence_skewness_equals_numpy():
  queries, gallery, _ = hub_data()
  counts = hubness.k_occurrence(queries, gallery, 5)
  top = np.argsort(-(queries @ gallery.T), axis=1, kind='stable')[:, :5]
  want = np.array([np.sum(top == g) for g in range(40)])
  np.testing.assert_array_equal(counts, want)
  assert counts.sum() == 25 * 5
  m = want.mean()
  skew = np.mean((want - m) ** 3) / np.mean((want - m) ** 2) ** 1.5
  assert hubness.skewness(counts) == pytest.approx(skew)
  assert skew > 1  # the planted hubs
  assert hubness.skewness(np.full(7, 3)) == 0.0

"""Exact and adaptive (Matryoshka) nearest-neighbour search over an embedding index, numpy only.

Scores are dot products of L2-normalised embeddings (cosine similarity). The top k of a query are
the first k items of the index sorted by descending score, ties broken by lower index: the
convention of eval/retrieval_lib.py. The index is scanned in chunks, so memory is O(queries x
chunk), never O(queries x index).
"""

from typing import Callable, Iterable

import numpy as np


def normalize(x: np.ndarray) -> np.ndarray:
  """Rows scaled to unit L2 norm (zero rows stay zero), float32: every eval job's embeddings."""
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def prefix(x: np.ndarray, dims: int | None) -> np.ndarray:
  """The first `dims` components of each row, re-normalised (None: every component)."""
  x = np.asarray(x, np.float32)
  return x if dims is None or dims >= x.shape[-1] else normalize(x[..., :dims])


def compose(image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
  """An image+text query as ALIGN composes it: the sum of the normalised embeddings, normalised."""
  return normalize(normalize(image_emb) + normalize(text_emb))


def merge_topk(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Per row, the k best (score desc, id asc) of candidate (scores, ids), both [Q, C]."""
  k = min(k, scores.shape[1])
  if k == 0:
    return scores[:, :0], ids[:, :0]
  if scores.shape[1] <= 4 * k:
    order = np.lexsort((ids, -scores), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, -1), np.take_along_axis(ids, order, -1)
  # A partition finds the k best values in O(C); only a row with ties at its k-th value (more
  # candidates >= it than k) needs the full sort, to keep the lowest ids of the tie.
  part = np.argpartition(-scores, k - 1, axis=-1)[:, :k]
  top_s, top_i = np.take_along_axis(scores, part, -1), np.take_along_axis(ids, part, -1)
  tied = np.nonzero((scores >= top_s.min(-1, keepdims=True)).sum(-1) > k)[0]
  if len(tied):
    full = np.lexsort((ids[tied], -scores[tied]), axis=-1)[:, :k]
    top_s[tied] = np.take_along_axis(scores[tied], full, -1)
    top_i[tied] = np.take_along_axis(ids[tied], full, -1)
  order = np.lexsort((top_i, -top_s), axis=-1)
  return np.take_along_axis(top_s, order, -1), np.take_along_axis(top_i, order, -1)


def dot_scores(queries: np.ndarray, chunk: np.ndarray) -> np.ndarray:
  """[Q, C] dot products of float32 rows (cosine similarity of unit rows)."""
  return np.asarray(queries, np.float32) @ np.asarray(chunk, np.float32).T


def topk_chunks(queries: np.ndarray, chunks: Iterable[np.ndarray], k: int,
                score: Callable[[np.ndarray, np.ndarray], np.ndarray] = dot_scores,
                dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
  """(scores [Q, k'], ids [Q, k']) of the exact top k (highest `score(queries, chunk)`, of
  `dtype`) over the concatenation of `chunks`, k' = min(k, index size); ids count from 0 across
  chunks."""
  best_s = np.zeros((len(queries), 0), dtype)
  best_i = np.zeros((len(queries), 0), np.int64)
  start = 0
  for chunk in chunks:
    scores = score(queries, chunk)
    ids = np.broadcast_to(start + np.arange(scores.shape[1]), scores.shape)
    best_s, best_i = merge_topk(np.concatenate([best_s, scores], 1),
                                np.concatenate([best_i, ids], 1), k)
    start += scores.shape[1]
  return best_s, best_i


def chunked(index: np.ndarray, chunk: int) -> Iterable[np.ndarray]:
  """Consecutive row blocks of at most `chunk` rows of an in-memory array."""
  for start in range(0, len(index), chunk):
    yield index[start:start + chunk]


def exact_search(queries: np.ndarray, index: np.ndarray, k: int, chunk: int = 65536,
                 dims: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Exact top k of each query over `index` (optionally both truncated to a prefix `dims`)."""
  return search_chunks(queries, chunked(index, chunk), k, dims)


def search_chunks(queries: np.ndarray, chunks: Iterable[np.ndarray], k: int,
                  dims: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Exact top k of each query over the chunks of an index (in memory or stored), queries and
  rows truncated to the prefix `dims` (None: full width)."""
  return topk_chunks(prefix(queries, dims), (prefix(c, dims) for c in chunks), k)


def rerank_rows(queries: np.ndarray, rows: np.ndarray, candidates: np.ndarray, k: int,
                ) -> tuple[np.ndarray, np.ndarray]:
  """The top k of each query among its candidate ids [Q, C], whose rows [Q, C, D] are given."""
  scores = np.einsum('qd,qcd->qc', np.asarray(queries, np.float32), np.asarray(rows, np.float32))
  return merge_topk(scores, candidates, k)


def rerank(queries: np.ndarray, index: np.ndarray, candidates: np.ndarray, k: int,
           ) -> tuple[np.ndarray, np.ndarray]:
  """The top k of each query among its candidate ids [Q, C], scored at full width."""
  return rerank_rows(queries, np.asarray(index, np.float32)[candidates], candidates, k)


def adaptive_search(queries: np.ndarray, index: np.ndarray, k: int, shortlist_dims: int,
                    shortlist: int, chunk: int = 65536, short_index: np.ndarray | None = None,
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Matryoshka adaptive retrieval: the `shortlist` best at the prefix `shortlist_dims`, reranked
  at full width; (scores, ids) of the top k. `short_index`: prefix(index, shortlist_dims) when
  the caller keeps it (a deployed index stores it once), else computed chunk by chunk."""
  if short_index is None:
    _, candidates = search_chunks(queries, chunked(index, chunk), max(shortlist, k),
                                  shortlist_dims)
  else:
    _, candidates = topk_chunks(prefix(queries, shortlist_dims), chunked(short_index, chunk),
                                max(shortlist, k))
  return rerank(queries, index, candidates, k)


def recall_vs_exact(found: np.ndarray, exact: np.ndarray) -> float:
  """Mean over queries of |found ∩ exact| / |exact|: how much of the exact top k a search finds."""
  hits = [len(np.intersect1d(f, e)) / max(len(e), 1) for f, e in zip(found, exact)]
  return float(np.mean(hits)) if hits else 1.0

"""Hubness reduction with a query bank, and the k-occurrence skewness that measures hubness.

Inverted softmax (Smith et al. 2017, "Offline bilingual word vectors, orthogonal
transformations and the inverted softmax"): a query q scores gallery item g as
    exp(beta * s(q, g)) / sum_{b in bank} exp(beta * s(b, g)),
so a "hub" (close to many queries) is damped. QB-Norm with the dynamic inverted softmax (Bogolin
et al. 2022, "Cross Modal Retrieval with Querybank Normalisation"): the gallery items in the top k
of some bank query form the activation set; a query whose top-1 item (raw similarity) lies in it is
scored by the inverted softmax, any other query keeps its raw similarities.

Both only re-score per query, so a query's ranking under them equals its ranking by the dot
product of augmented embeddings  [beta * q, -w_q] . [g, c_g]  with c_g = log sum_b exp(beta s(b, g))
and w_q = 1 (normalised query) or 0 (raw query): that is how the retrieval job ranks them with the
exact, chunked eval/retrieval_lib.py.

Hubness (Radovanović et al. 2010): N_k(g) = how many queries have g in their top k; the skewness of
N_k over the gallery is large when a few items are everyone's neighbours.
"""

import numpy as np

from eval.search_lib import exact_search

METHODS = ('none', 'inverted_softmax', 'qb_norm')


def bank_lognorm(bank: np.ndarray, gallery: np.ndarray, beta: float, chunk: int = 4096,
                 ) -> np.ndarray:
  """[G] log sum_b exp(beta * bank_b . gallery_g), accumulated over chunks of the bank."""
  gallery = np.asarray(gallery, np.float32)
  total = np.full(len(gallery), -np.inf)
  for start in range(0, len(bank), chunk):
    logits = beta * (np.asarray(bank[start:start + chunk], np.float32) @ gallery.T).astype(
        np.float64)
    total = np.logaddexp(total, np.logaddexp.reduce(logits, axis=0))
  return total


def activation_set(bank: np.ndarray, gallery: np.ndarray, k: int = 1) -> np.ndarray:
  """Sorted ids of the gallery items in the top k of at least one bank query."""
  return np.unique(topk_ids(bank, gallery, k))


def topk_ids(queries: np.ndarray, gallery: np.ndarray, k: int, block: int = 1024,
             chunk: int = 8192) -> np.ndarray:
  """[Q, k] exact top-k gallery ids per query (ties by lower id), in blocks of queries."""
  out = [exact_search(queries[s:s + block], gallery, k, chunk)[1]
         for s in range(0, len(queries), block)]
  return np.concatenate(out) if out else np.zeros((0, k), np.int64)


def normalised_queries(method: str, queries: np.ndarray, gallery: np.ndarray, bank: np.ndarray,
                       k: int = 1) -> np.ndarray:
  """[Q] bool: which queries the method re-scores (all for inverted softmax; QB-Norm: those
  whose raw top-1 item is in the bank's activation set)."""
  if method == 'inverted_softmax':
    return np.ones(len(queries), bool)
  if method == 'qb_norm':
    return np.isin(topk_ids(queries, gallery, 1)[:, 0], activation_set(bank, gallery, k))
  return np.zeros(len(queries), bool)


def augment(method: str, queries: np.ndarray, gallery: np.ndarray, bank: np.ndarray | None,
            beta: float, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """(queries', gallery') whose dot products rank every query as `method` scores it."""
  queries, gallery = np.asarray(queries, np.float32), np.asarray(gallery, np.float32)
  if method == 'none':
    return queries, gallery
  w = normalised_queries(method, queries, gallery, bank, k).astype(np.float32)
  c = bank_lognorm(bank, gallery, beta).astype(np.float32)
  return (np.concatenate([beta * queries, -w[:, None]], 1),
          np.concatenate([gallery, c[:, None]], 1))


def scores(method: str, queries: np.ndarray, gallery: np.ndarray, bank: np.ndarray | None,
           beta: float, k: int = 1) -> np.ndarray:
  """[Q, G] the method's scores in log space (dense: for small sets and checks)."""
  q, g = augment(method, queries, gallery, bank, beta, k)
  return q.astype(np.float64) @ g.T.astype(np.float64)


def k_occurrence(queries: np.ndarray, gallery: np.ndarray, k: int = 10) -> np.ndarray:
  """[G] N_k: for each gallery item, the number of queries with it in their top k."""
  ids = topk_ids(queries, gallery, min(k, len(gallery)))
  return np.bincount(ids.ravel(), minlength=len(gallery))


def skewness(x: np.ndarray) -> float:
  """Population skewness E[(x - mean)^3] / std^3 (0 when x is constant)."""
  x = np.asarray(x, np.float64)
  std = x.std()
  return float(np.mean((x - x.mean()) ** 3) / std ** 3) if std > 0 else 0.0

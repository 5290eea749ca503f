"""Binary codes: sign-quantised embedding prefixes ranked by Hamming distance.

A code keeps one bit per dimension of the first BITS components (1 where the component is > 0),
packed 8 to a byte (np.packbits, big-endian bit order). Hamming distance is the popcount of the
XOR of two codes. Ties are broken by lower index, as everywhere in eval/. The ±1 vectors of two
codes have dot product BITS - 2 * Hamming, so float rankers that break ties the same way (e.g.
eval/retrieval_lib.py) give exactly the Hamming ranking when fed `signs(x, bits)`.
"""

from typing import Iterable

import numpy as np

from data.errors import ConfigError
from eval.search_lib import topk_chunks


def check_bits(bits: int, dim: int) -> None:
  """Raises ConfigError unless 1 <= bits <= dim."""
  if not 1 <= bits <= dim:
    raise ConfigError(f'--binary {bits}: the embeddings have {dim} dimensions; pick 1..{dim}')


def pack(x: np.ndarray, bits: int) -> np.ndarray:
  """[N, ceil(bits/8)] uint8 codes of the first `bits` components' signs."""
  check_bits(bits, x.shape[-1])
  return np.packbits(np.asarray(x)[:, :bits] > 0, axis=-1)


def signs(x: np.ndarray, bits: int) -> np.ndarray:
  """[N, bits] float32 ±1 vectors of the same codes (for float rankers)."""
  check_bits(bits, x.shape[-1])
  return np.where(np.asarray(x)[:, :bits] > 0, 1.0, -1.0).astype(np.float32)


def hamming(queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
  """[Q, N] Hamming distances between packed codes (popcount of the XOR)."""
  xor = np.bitwise_xor(queries[:, None, :], codes[None, :, :])
  return np.bitwise_count(xor).sum(-1, dtype=np.int32)


def hamming_topk(queries: np.ndarray, chunks: Iterable[np.ndarray], k: int,
                 ) -> tuple[np.ndarray, np.ndarray]:
  """(distances, ids) of the k nearest codes per query over the concatenated chunks of packed
  codes (ids count across chunks), ties by lower id."""
  # The top k keeps the highest scores: rank by negated distance, and negate back.
  neg, ids = topk_chunks(queries, chunks, k, lambda q, block: -hamming(q, block), np.int32)
  return -neg, ids


def reranked_ranks(query_codes: np.ndarray, gallery_codes: np.ndarray, query_emb: np.ndarray,
                   gallery_emb: np.ndarray, query_group: np.ndarray, gallery_group: np.ndarray,
                   rerank: int, block: int = 32) -> np.ndarray:
  """1-based rank of each query's best positive (gallery_group == query_group) when the gallery
  is ordered by Hamming distance, then its first `rerank` items re-sorted by float score."""
  ranks = np.empty(len(query_codes), np.int64)
  gallery_emb = np.asarray(gallery_emb, np.float32)
  for start in range(0, len(query_codes), block):
    stop = min(start + block, len(query_codes))
    d = hamming(query_codes[start:stop], gallery_codes)
    order = np.argsort(d, axis=1, kind='stable')  # Hamming order, ties by lower index
    head = order[:, :rerank]
    s = np.einsum('qd,qcd->qc', np.asarray(query_emb[start:stop], np.float32), gallery_emb[head])
    head = np.take_along_axis(head, np.lexsort((head, -s), axis=-1), -1)
    order = np.concatenate([head, order[:, rerank:]], 1)
    positive = gallery_group[order] == query_group[start:stop, None]
    ranks[start:stop] = np.argmax(positive, axis=1) + 1
  return ranks

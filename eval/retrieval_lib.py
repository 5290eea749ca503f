"""Image-text retrieval metrics (CLIP_benchmark definitions), exact, in O(block x chunk) memory.

The rank of a query is the position of its best positive in the database sorted by descending
score, ties broken by lower index (a stable sort). recall@k is the fraction of queries whose rank
is <= k; for image->text a query is a hit when ANY of its captions is in the top k; each caption
belongs to one image. Conventions of CLIP_benchmark (zeroshot_retrieval.py), checked value for value
against the package by tests/test_metric_parity.py:
- recall@k is a float32 mean there (`(recall > 0).float().mean()`), so it is the float32 nearest
  hits / queries here too (e.g. 0.8999999761581421 for 9/10, not 0.9).
- Captions are numbered image by image (eval/retrieval.py lists them so, as CLIP_benchmark does)
  and with exactly equal scores the lower-numbered caption or image ranks first. CLIP_benchmark
  takes torch.topk, whose order among exactly equal scores is unspecified (on CPU whatever
  std::partial_sort / std::nth_element leave, on GPU a radix select): no index rule reproduces it,
  so where exact ties straddle the k-th place the two can differ by those ties, both within the
  all-ties-lost / all-ties-won bounds. Embeddings from a model seldom tie exactly.
Two passes over blocks of the similarity matrix (never all of it): the first finds each query's
best positive score, the second counts the items ranked above it. Both directions share the blocks.
"""

import jax
import jax.numpy as jnp
import numpy as np

KS = (1, 5, 10)


@jax.jit
def _block_best(img, txt, owner, img_start, txt_start, best_i, arg_i, best_t):
  """Pass 1 on one block: best positive caption per image, positive score per caption."""
  s = jnp.dot(img, txt.T, precision=jax.lax.Precision.HIGHEST)
  img_idx = img_start + jnp.arange(img.shape[0])
  txt_idx = txt_start + jnp.arange(txt.shape[0])
  positive = owner[None, :] == img_idx[:, None]
  masked = jnp.where(positive, s, -jnp.inf)
  row_best = jnp.max(masked, axis=1)
  row_arg = txt_start + jnp.argmax(masked, axis=1)  # first (lowest-index) maximum
  better = (row_best > best_i) | ((row_best == best_i) & (row_arg < arg_i))
  best_i = jnp.where(better, row_best, best_i)
  arg_i = jnp.where(better, row_arg, arg_i)
  col = jnp.max(masked, axis=0)  # at most one positive image per caption
  best_t = jnp.maximum(best_t, col)
  return best_i, arg_i, best_t


@jax.jit
def _block_count(img, txt, owner, img_start, txt_start, n_img, n_txt, best_i, arg_i, best_t):
  """Pass 2 on one block: items ranked above each query's best positive."""
  s = jnp.dot(img, txt.T, precision=jax.lax.Precision.HIGHEST)
  img_idx = img_start + jnp.arange(img.shape[0])
  txt_idx = txt_start + jnp.arange(txt.shape[0])
  valid = (img_idx[:, None] < n_img) & (txt_idx[None, :] < n_txt)
  positive = owner[None, :] == img_idx[:, None]
  above_i = (s > best_i[:, None]) | ((s == best_i[:, None]) & (txt_idx[None, :] < arg_i[:, None]))
  count_i = jnp.sum(above_i & ~positive & valid, axis=1)
  own = owner[None, :]
  above_t = (s > best_t[None, :]) | ((s == best_t[None, :]) & (img_idx[:, None] < own))
  count_t = jnp.sum(above_t & ~positive & valid, axis=0)
  return count_i, count_t


def _rows(x: np.ndarray, start: int, size: int, fill=0) -> np.ndarray:
  """x[start:start+size], padded with `fill` up to `size` rows (only the last block is copied)."""
  part = x[start:start + size]
  if len(part) == size:
    return part
  return np.concatenate([part, np.full((size - len(part), *x.shape[1:]), fill, x.dtype)])


def retrieval_ranks(image_emb: np.ndarray, text_emb: np.ndarray, text_owner: np.ndarray,
                    block: int = 1024, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
  """1-based ranks: (image->text per image, text->image per caption). text_owner[j] = image of j."""
  n_img, n_txt = len(image_emb), len(text_emb)
  if n_img == 0 or n_txt == 0:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
  block, chunk = min(block, n_img), min(chunk, n_txt)
  img = np.asarray(image_emb, np.float32)  # no copy when already float32
  txt = np.asarray(text_emb, np.float32)
  owner = np.asarray(text_owner, np.int32)
  n_blocks, n_chunks = -(-n_img // block), -(-n_txt // chunk)
  best_i = np.full(n_blocks * block, -np.inf, np.float32)
  arg_i = np.full(n_blocks * block, np.iinfo(np.int32).max, np.int32)
  best_t = np.full(n_chunks * chunk, -np.inf, np.float32)
  tiles = [(i * block, j * chunk) for i in range(n_blocks) for j in range(n_chunks)]

  def tile(i, j):
    return (_rows(img, i, block), _rows(txt, j, chunk), _rows(owner, j, chunk, -1), i, j)

  for i, j in tiles:
    bi, ai, bt = _block_best(*tile(i, j), best_i[i:i + block], arg_i[i:i + block],
                             best_t[j:j + chunk])
    best_i[i:i + block], arg_i[i:i + block], best_t[j:j + chunk] = bi, ai, bt
  count_i = np.zeros(n_blocks * block, np.int64)
  count_t = np.zeros(n_chunks * chunk, np.int64)
  for i, j in tiles:
    ci, ct = _block_count(*tile(i, j), n_img, n_txt, best_i[i:i + block], arg_i[i:i + block],
                          best_t[j:j + chunk])
    count_i[i:i + block] += np.asarray(ci)
    count_t[j:j + chunk] += np.asarray(ct)
  return count_i[:n_img] + 1, count_t[:n_txt] + 1


def float32_fraction(hits: np.ndarray) -> float:
  """The fraction of true entries as CLIP_benchmark's float32 mean gives it (nan when empty)."""
  if hits.size == 0:
    return float('nan')
  return float(np.float32(np.count_nonzero(hits)) / np.float32(hits.size))


def metrics_from_ranks(rank_i2t: np.ndarray, rank_t2i: np.ndarray) -> dict:
  """recall@k and mean rank of both directions from the 1-based ranks of the best positives."""
  metrics = {}
  for k in KS:
    metrics[f'text_retrieval_recall@{k}'] = float32_fraction(rank_i2t <= k)
    metrics[f'image_retrieval_recall@{k}'] = float32_fraction(rank_t2i <= k)
  metrics['text_retrieval_mean_rank'] = float(np.mean(rank_i2t))
  metrics['image_retrieval_mean_rank'] = float(np.mean(rank_t2i))
  return metrics


def retrieval_metrics(image_emb: np.ndarray, text_emb: np.ndarray, text_owner: np.ndarray,
                      **chunking) -> dict:
  """text_retrieval_recall@k (image->text), image_retrieval_recall@k (text->image), mean ranks."""
  return metrics_from_ranks(*retrieval_ranks(image_emb, text_emb, text_owner, **chunking))

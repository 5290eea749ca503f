"""The retrieval job's alternative rankers: hubness reduction with a query bank, binary codes.

`--hubness inverted_softmax|qb_norm` re-scores each direction with a bank of queries of that
direction's query modality (texts for text->image, images for image->text), `--binary BITS` ranks
by the Hamming distance of sign codes of the first BITS dimensions (`--binary_rerank K`: the
Hamming top K re-sorted by float score). The metric names stay the plain ones; the method goes into
the eval settings, so its results get a folder of their own. Every variant also reports the
skewness of the k-occurrence distribution (`*_hubness@k`) under the scores it ranks by.
"""

import argparse

import numpy as np

from data.errors import ConfigError
from eval import binary_codes, hubness
from eval.provenance import dataset_identity
from eval.retrieval_lib import metrics_from_ranks, retrieval_ranks


def add_flags(parser: argparse.ArgumentParser) -> None:
  """--hubness, --query_bank[_size], --hubness_temperature, --qb_norm_k, --hubness_k, --binary."""
  parser.add_argument('--hubness', choices=hubness.METHODS, default='none',
                      help='hubness reduction: inverted softmax or QB-Norm (dynamic IS)')
  parser.add_argument('--query_bank', default=None,
                      help='data spec of the query bank (e.g. training captions/images)')
  parser.add_argument('--query_bank_size', type=int, default=5000,
                      help='bank queries per direction: the first N captions / images')
  parser.add_argument('--hubness_temperature', type=float, default=0.05,
                      help='T of exp(s / T) in the inverted softmax (beta = 1/T; 0.05: QB-Norm)')
  parser.add_argument('--qb_norm_k', type=int, default=1,
                      help='QB-Norm activation set: items in the top k of some bank query')
  parser.add_argument('--hubness_k', type=int, default=10, help='k of the k-occurrence skewness')
  parser.add_argument('--binary', type=int, default=0,
                      help='rank by Hamming distance of sign codes of the first BITS dims')
  parser.add_argument('--binary_rerank', type=int, default=0,
                      help='with --binary: re-sort the Hamming top K by float score')


def parse_defaults() -> argparse.Namespace:
  """The flags' defaults: the plain float ranking."""
  parser = argparse.ArgumentParser()
  add_flags(parser)
  return parser.parse_args([])


def check(args: argparse.Namespace) -> None:
  """One-line ConfigErrors for contradictory or out-of-range flags."""
  if args.hubness != 'none' and not args.query_bank:
    raise ConfigError(f'--hubness {args.hubness} needs --query_bank SPEC')
  if args.hubness != 'none' and args.binary:
    raise ConfigError('--hubness and --binary cannot be combined')
  if args.query_bank_size < 1 or args.qb_norm_k < 1 or args.hubness_k < 1:
    raise ConfigError('--query_bank_size, --qb_norm_k and --hubness_k must be >= 1')
  if args.hubness_temperature <= 0:
    raise ConfigError(f'--hubness_temperature must be > 0, not {args.hubness_temperature}')
  if args.binary < 0 or args.binary_rerank < 0 or (args.binary_rerank and not args.binary):
    raise ConfigError('--binary BITS >= 1; --binary_rerank K >= 0 needs --binary')


def settings(args: argparse.Namespace, bank_source) -> dict:
  """What of these flags decides the numbers; empty for the plain ranking (old folders stay)."""
  out = {}
  if args.hubness != 'none':
    out['hubness'] = {'method': args.hubness, 'temperature': args.hubness_temperature,
                      'bank': dataset_identity(args.query_bank, bank_source),
                      'bank_size': args.query_bank_size}
    if args.hubness == 'qb_norm':
      out['hubness']['k'] = args.qb_norm_k
  if args.binary:
    out['binary'] = {'bits': args.binary, 'rerank': args.binary_rerank}
  if args.hubness_k != 10:
    out['hubness_k'] = args.hubness_k
  return out


def embed_bank(embedder, tokenizer, source, size: int, image_size: int, context_length: int,
               batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(image bank, text bank): the first `size` images and the first `size` captions."""
  captions, i = [], 0
  while len(captions) < size and i < len(source):
    captions.extend(source.text(i))
    i += 1
  captions = captions[:size]
  images = embedder.embed_images(source, image_size, batch_size, count=min(size, len(source)))
  texts = embedder.embed_texts(tokenizer.encode(captions, context_length), batch_size)
  return images, texts


def variant_metrics(args: argparse.Namespace, image_emb: np.ndarray, text_emb: np.ndarray,
                    owner: np.ndarray, banks: tuple[np.ndarray, np.ndarray] | None) -> dict:
  """The retrieval metrics under the flags' ranker, with the k-occurrence skewness."""
  beta = 1.0 / args.hubness_temperature
  image_float, text_float = image_emb, text_emb
  if args.binary:  # ±1 vectors: their dot products rank exactly as Hamming distance does
    image_emb = binary_codes.signs(image_emb, args.binary)
    text_emb = binary_codes.signs(text_emb, args.binary)
  image_bank, text_bank = banks or (None, None)
  # text->image: texts query images; image->text: images query texts.
  t_q, i_g = hubness.augment(args.hubness, text_emb, image_emb, text_bank, beta, args.qb_norm_k)
  i_q, t_g = hubness.augment(args.hubness, image_emb, text_emb, image_bank, beta, args.qb_norm_k)
  if args.binary and args.binary_rerank:
    rank_i2t, rank_t2i = _reranked(args.binary, args.binary_rerank, image_float, text_float, owner)
  elif args.hubness == 'none':
    rank_i2t, rank_t2i = retrieval_ranks(image_emb, text_emb, owner)
  else:
    rank_t2i = retrieval_ranks(i_g, t_q, owner)[1]
    rank_i2t = retrieval_ranks(i_q, t_g, owner)[0]
  metrics = metrics_from_ranks(rank_i2t, rank_t2i)
  k = args.hubness_k
  metrics[f'image_retrieval_hubness@{k}'] = hubness.skewness(hubness.k_occurrence(t_q, i_g, k))
  metrics[f'text_retrieval_hubness@{k}'] = hubness.skewness(hubness.k_occurrence(i_q, t_g, k))
  return metrics


def _reranked(bits: int, rerank: int, image_emb: np.ndarray, text_emb: np.ndarray,
              owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Ranks (image->text, text->image) of Hamming order with its top K re-sorted in float."""
  image_codes, text_codes = binary_codes.pack(image_emb, bits), binary_codes.pack(text_emb, bits)
  ids = np.arange(len(image_codes))
  rank_i2t = binary_codes.reranked_ranks(image_codes, text_codes, image_emb, text_emb, ids, owner,
                                         rerank)
  rank_t2i = binary_codes.reranked_ranks(text_codes, image_codes, text_emb, image_emb, owner, ids,
                                         rerank)
  return rank_i2t, rank_t2i

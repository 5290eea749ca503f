"""Zero-shot classification with CLIP_benchmark's definitions (pure functions of arrays)."""

import numpy as np

from data.tokenizer import Tokenizer
from eval.embed import Embedder


def _normalize(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def class_embeddings(embedder: Embedder, tokenizer: Tokenizer, classnames: list[str],
                     templates: list[str], context_length: int, batch_size: int) -> np.ndarray:
  """[C, D]: per class, normalised prompt embeddings averaged, then re-normalised."""
  prompts = [t.replace('{c}', name) for name in classnames for t in templates]
  tokens = tokenizer.encode(prompts, context_length)
  emb = _normalize(embedder.embed_texts(tokens, batch_size))
  emb = emb.reshape(len(classnames), len(templates), -1).mean(axis=1)
  return _normalize(emb)


def zeroshot_metrics(image_emb: np.ndarray, labels: np.ndarray, class_emb: np.ndarray) -> dict:
  """acc1, acc5 (when >= 5 classes), mean_per_class_recall and the confusion matrix."""
  num_classes = class_emb.shape[0]
  scores = image_emb @ class_emb.T
  # Stable descending order: among equal scores the lower class index ranks first.
  ranked = np.argsort(-scores, axis=1, kind='stable')
  pred = ranked[:, 0]
  confusion = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(confusion, (labels, pred), 1)
  present = confusion.sum(axis=1) > 0
  recalls = np.diag(confusion)[present] / confusion.sum(axis=1)[present]
  metrics = {'acc1': float(np.mean(pred == labels)),
             'mean_per_class_recall': float(np.mean(recalls)),
             'confusion': confusion}
  if num_classes >= 5:
    metrics['acc5'] = float(np.mean(np.any(ranked[:, :5] == labels[:, None], axis=1)))
  return metrics


def source_labels(source) -> np.ndarray:
  """Every record's label: `source.labels()` when the source has it cheaply, else by reading."""
  if hasattr(source, 'labels'):
    return np.asarray(source.labels(), np.int64)
  return np.array([source[i]['label'] for i in range(len(source))], np.int64)


def evaluate_zeroshot(embedder: Embedder, tokenizer: Tokenizer, source, templates: list[str], *,
                      image_size: int, context_length: int, batch_size: int) -> dict:
  """Embeds every image of a labelled source once and scores it against its class names."""
  count = len(source)
  image_emb = embedder.embed_images(source, image_size, batch_size)
  labels = source_labels(source)
  class_emb = class_embeddings(embedder, tokenizer, list(source.classnames), templates,
                               context_length, batch_size)
  metrics = zeroshot_metrics(image_emb, labels, class_emb)
  metrics['num_examples'] = count
  return metrics

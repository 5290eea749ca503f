"""Zero-shot classification with CLIP_benchmark's definitions (pure functions of arrays).

Conventions of CLIP_benchmark (zeroshot_classification.py), checked value for value against the
package by tests/test_metric_parity.py:
- acc1 / acc5: the fraction of images whose label is among the 1 / 5 best-scored classes (acc5
  only with >= 5 classes; CLIP_benchmark reports nan there, we leave the key out), hits / images
  in float64. With exactly equal scores the lower class index ranks first: torch.argmax's
  documented rule. CLIP_benchmark's acc1/acc5 take torch.topk, whose order among exactly equal
  scores is unspecified (on CPU whatever std::partial_sort / std::nth_element leave, on GPU a radix
  select): no index rule reproduces it, so where exact ties straddle the k-th place the two can
  differ by those ties, both within the all-ties-lost / all-ties-won bounds. Embeddings from a
  model seldom tie exactly.
- mean_per_class_recall: sklearn's balanced_accuracy_score of the argmax prediction (equal to
  CLIP_benchmark's value even with ties, as argmax's rule is ours): the recall
  of each class that has images, averaged over those classes (a class only predicted, never
  true, does not count).
- The scores are cosine similarities; CLIP_benchmark's 100x logit scale changes no ranking.
"""

from typing import Sequence

import numpy as np

from data.errors import ConfigError
from data.tokenizer import Tokenizer
from eval.embed import Embedder
from eval.prefixes import metrics_at_prefixes, truncate
from eval.search_lib import normalize


def class_embeddings(embedder: Embedder, tokenizer: Tokenizer, classnames: list[str],
                     templates: list[str], context_length: int, batch_size: int) -> np.ndarray:
  """[C, D]: per class, normalised prompt embeddings averaged, then re-normalised."""
  prompts = [t.replace('{c}', name) for name in classnames for t in templates]
  tokens = tokenizer.encode(prompts, context_length)
  return classifier(embedder.embed_texts(tokens, batch_size), len(classnames))


def classifier(prompt_emb: np.ndarray, num_classes: int) -> np.ndarray:
  """[C, D] from [C * templates, D] prompt embeddings (class-major): normalised, averaged per
  class, re-normalised."""
  emb = normalize(prompt_emb).reshape(num_classes, -1, prompt_emb.shape[-1]).mean(axis=1)
  return normalize(emb)


def zeroshot_metrics(image_emb: np.ndarray, labels: np.ndarray, class_emb: np.ndarray) -> dict:
  """acc1, acc5 (when >= 5 classes), mean_per_class_recall and the confusion matrix."""
  return classification_metrics(image_emb @ class_emb.T, labels)


def classification_metrics(scores: np.ndarray, labels: np.ndarray) -> dict:
  """The metrics above of [N, C] class scores (any classifier's: zero-shot, linear probe)."""
  num_classes = scores.shape[1]
  labels = np.asarray(labels)
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
                      image_size: int, context_length: int, batch_size: int,
                      classnames: list[str] | None = None,
                      dims: Sequence[int] | None = None) -> dict:
  """Embeds every image of a labelled source once and scores it against its class names
  (`classnames`, default the source's own: one per label); with `dims` (ascending, the full width
  last), also at each narrower prefix of the image and prompt embeddings (eval/prefixes.py)."""
  count = len(source)
  classnames = list(source.classnames if classnames is None else classnames)
  labels = source_labels(source)
  if len(labels) and not 0 <= labels.min() <= labels.max() < len(classnames):
    raise ConfigError(f'{len(classnames)} class names for labels {labels.min()}..{labels.max()} '
                      f'of {getattr(source, "name", "the set")}: give one name per class')
  image_emb = embedder.embed_images(source, image_size, batch_size)
  prompts = [t.replace('{c}', name) for name in classnames for t in templates]
  prompt_emb = embedder.embed_texts(tokenizer.encode(prompts, context_length), batch_size)
  widths = tuple(dims) if dims else (image_emb.shape[-1],)
  # Each prefix's classifier from that prefix of every prompt embedding, as the model would
  # build it at that width (not a truncation of the averaged full-width classifier).
  metrics = metrics_at_prefixes(widths, lambda k: zeroshot_metrics(
      truncate(image_emb, k), labels, classifier(truncate(prompt_emb, k), len(classnames))))
  metrics['num_examples'] = count
  return metrics

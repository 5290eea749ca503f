"""Linear probes on frozen embeddings (pure functions of arrays; the fits run on device in jax).

The classifier is ridge regression on one-hot targets, solved in closed form, as big_vision's
few-shot evaluator does, rather than CLIP's L-BFGS logistic regression (which CLIP_benchmark
replaces by AdamW epochs): one eigendecomposition of the centred D x D Gram matrix gives the
exact solution for every regularisation of the sweep at the cost of a matrix product each, with no
iterations, learning rate or convergence test, so results are deterministic and cheap enough to
run during training. Its numbers are not logistic regression's (not comparable digit for digit
with a paper's L-BFGS probe); they compare checkpoints and models under one protocol. The metric
definitions are CLIP_benchmark's (eval.zeroshot_lib; lp_acc5
with >= 5 classes, as its zero-shot acc5, where its probe asks for a label >= 5).

Protocol, as CLIP_benchmark's: the regularisation is chosen on a held-out part of train (a fixed,
class-stratified `holdout` fraction), best held-out acc1 over a log sweep of L2 values (relative
to the mean eigenvalue, so one grid fits any N and D; ties go to the stronger regularisation);
the full probe then refits on all of train, a k-shot probe on its k examples per class only
(drawn from the part of train outside the held-out part, so selection never sees them).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from data.errors import ConfigError
from eval.zeroshot_lib import classification_metrics

# L2 strengths, times the mean eigenvalue of the centred Gram matrix (trace / D).
L2_SCALES = tuple(10.0 ** e for e in np.arange(-4.0, 2.01, 0.5))
HOLDOUT_SEED = 0  # the held-out part is the same for every probe of a set
HIGHEST = jax.lax.Precision.HIGHEST  # TPUs would otherwise multiply in bfloat16


@functools.partial(jax.jit, static_argnums=2)
def _moments(x, labels, num_classes):
  """Means, centred Gram matrix and centred X^T Y of a fit set."""
  y = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  mean_x, mean_y = x.mean(axis=0), y.mean(axis=0)
  xc = x - mean_x
  gram = jnp.dot(xc.T, xc, precision=HIGHEST)
  xty = jnp.dot(xc.T, y - mean_y, precision=HIGHEST)
  eig, vec = jnp.linalg.eigh(gram)
  # Rounding leaves tiny negative eigenvalues of a singular Gram matrix (N < D): they are 0.
  eig = jnp.maximum(eig, 0.0)
  return mean_x, mean_y, eig, vec, jnp.dot(vec.T, xty, precision=HIGHEST)


@jax.jit
def _weights(mean_x, mean_y, eig, vec, proj, l2):
  """W = (Xc^T Xc + l2 I)^-1 Xc^T Yc through the eigenvectors; b so that the means map."""
  w = jnp.dot(vec, proj / (eig + l2)[:, None], precision=HIGHEST)
  return w, mean_y - jnp.dot(mean_x, w, precision=HIGHEST)


@jax.jit
def _scores(x, w, b):
  return jnp.dot(x, w, precision=HIGHEST) + b


@jax.jit
def _hits(x, labels, w, b):
  return jnp.sum(jnp.argmax(_scores(x, w, b), axis=1) == labels)


def fit_ridge(x: np.ndarray, labels: np.ndarray, num_classes: int,
              l2_scale: float) -> tuple[np.ndarray, np.ndarray]:
  """(W [D, C], b [C]) of ridge regression on one-hot targets, L2 = l2_scale * trace / D."""
  moments = _moments(jnp.asarray(x, jnp.float32), jnp.asarray(labels), num_classes)
  l2 = l2_scale * jnp.maximum(moments[2].mean(), 1e-12)
  w, b = _weights(*moments, l2)
  return np.asarray(w), np.asarray(b)


def select_l2(x: np.ndarray, labels: np.ndarray, val_x: np.ndarray, val_labels: np.ndarray,
              num_classes: int, scales=L2_SCALES) -> tuple[float, list[float]]:
  """(best L2 scale, held-out acc1 per scale): fit on (x, labels), score (val_x, val_labels)."""
  moments = _moments(jnp.asarray(x, jnp.float32), jnp.asarray(labels), num_classes)
  mean_eig = jnp.maximum(moments[2].mean(), 1e-12)
  val_x, val_labels = jnp.asarray(val_x, jnp.float32), jnp.asarray(val_labels)
  accs = [int(_hits(val_x, val_labels, *_weights(*moments, s * mean_eig))) / len(val_labels)
          for s in scales]
  # The largest scale among the best: the smoothest model held-out data cannot tell apart.
  best = max(range(len(scales)), key=lambda i: (accs[i], i))
  return float(scales[best]), accs


def holdout_split(labels: np.ndarray, fraction: float,
                  seed: int = HOLDOUT_SEED) -> tuple[np.ndarray, np.ndarray]:
  """(fit, held-out) indices: per class, round(fraction * n) examples held out (at least one
  when the class has two or more, none when it has one), drawn with `seed`."""
  rng = np.random.default_rng(seed)
  fit, held = [], []
  for c in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == c))
    n = len(members)
    count = 0 if n < 2 else min(n - 1, max(1, round(fraction * n)))
    held.append(members[:count])
    fit.append(members[count:])
  return np.sort(np.concatenate(fit)), np.sort(np.concatenate(held))


def fewshot_indices(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
  """Exactly k indices per class present in `labels`, drawn with `seed` (sorted). Nested: the
  k-shot draw of a seed holds its smaller draws."""
  rng = np.random.default_rng(seed)
  picked = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    if len(members) < k:
      raise ConfigError(f'{k}-shot probe: class {c} has only {len(members)} training examples '
                        'outside the held-out part')
    picked.append(rng.permutation(members)[:k])
  return np.sort(np.concatenate(picked))


def _score(fit_x, fit_y, val_x, val_y, final_x, final_y, test_x, test_y, num_classes):
  """Chooses the L2 scale on (fit -> val), refits on `final`, scores test: (metrics, scale)."""
  scale, _ = select_l2(fit_x, fit_y, val_x, val_y, num_classes)
  w, b = fit_ridge(final_x, final_y, num_classes, scale)
  scores = np.asarray(_scores(jnp.asarray(test_x, jnp.float32), w, b))
  metrics = classification_metrics(scores, test_y)
  return {f'lp_{k}': v for k, v in metrics.items()}, scale


def _check_holdout(val: np.ndarray) -> None:
  """A probe needs held-out examples to choose its regularisation."""
  if len(val) == 0:
    raise ConfigError('linear probe: the training split needs two or more examples of some '
                      'class to hold any out for choosing the regularisation')


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                 test_y: np.ndarray, num_classes: int, holdout: float = 0.2) -> dict:
  """The full probe: lp_acc1, lp_acc5 (>= 5 classes), lp_mean_per_class_recall, lp_l2_scale and
  lp_confusion (an array)."""
  fit, val = holdout_split(train_y, holdout)
  _check_holdout(val)
  metrics, scale = _score(train_x[fit], train_y[fit], train_x[val], train_y[val], train_x,
                          train_y, test_x, test_y, num_classes)
  metrics['lp_l2_scale'] = scale
  return metrics


def fewshot_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                  test_y: np.ndarray, num_classes: int, shots: list[int], seeds: int,
                  holdout: float = 0.2) -> dict:
  """k-shot probes for each k in `shots`, seeds 0..seeds-1: 'lp_acc1@5shot' (mean over seeds),
  'lp_acc1@5shot_std' (std over seeds, ddof 0), ... and 'lp_per_seed': every seed's values."""
  fit, val = holdout_split(train_y, holdout)
  _check_holdout(val)
  val_x, val_y = train_x[val], train_y[val]
  metrics, per_seed = {}, {}
  for k in shots:
    runs = []
    for seed in range(seeds):
      idx = fit[fewshot_indices(train_y[fit], k, seed)]
      got, scale = _score(train_x[idx], train_y[idx], val_x, val_y, train_x[idx], train_y[idx],
                          test_x, test_y, num_classes)
      got.pop('lp_confusion')
      runs.append(dict(got, lp_l2_scale=scale))
    per_seed[f'{k}shot'] = {key: [run[key] for run in runs] for key in runs[0]}
    for key in ('lp_acc1', 'lp_acc5', 'lp_mean_per_class_recall'):
      if key in runs[0]:
        values = np.array(per_seed[f'{k}shot'][key])
        metrics[f'{key}@{k}shot'] = float(values.mean())
        metrics[f'{key}@{k}shot_std'] = float(values.std())
  metrics['lp_per_seed'] = per_seed
  return metrics

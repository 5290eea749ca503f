"""Light evaluations while a run trains (config.eval): the offline jobs' code on the live state.

Every `eval.every` steps and at the final step, each task of `rules.eval_tasks(config.eval)`
(zero-shot or retrieval on a small set) embeds its set with the live parameters through one
Embedder (compiled once, its parameters swapped per evaluation) and scores it with
eval.zeroshot_lib / eval.retrieval's functions, so a row here equals what `python -m
eval.zeroshot` / `eval.retrieval` compute on the checkpoint of that step. The metrics are
`<kind>/<dataset>/<metric>`, as those jobs tag their TensorBoard scalars. Steps are multiples of
`every` counted from step 0, so a resumed run evaluates at the same steps.
"""

import time

import jax

from data.errors import ConfigError
from data.sources import open_source
from eval.classnames import resolve_classnames
from eval.embed import Embedder
from eval.job import dataset_name
from eval.prefixes import parse_dims
from eval.retrieval import evaluate_retrieval
from eval.templates import load_templates
from eval.zeroshot_lib import evaluate_zeroshot
from pretrain.config.rules import eval_tasks


class Task:
  """One opened evaluation: its kind, spec, source, output name (and class names)."""

  def __init__(self, kind: str, spec: str, config):
    self.kind, self.spec = kind, spec
    try:  # The sources the offline jobs open for the same spec (same image size and seed).
      self.source = open_source(spec, config.model.image_size, config.seed)
      self.classnames = resolve_classnames(self.source, spec, None) if kind == 'zeroshot' else None
    except ConfigError as e:
      raise ConfigError(f'eval task {kind}={spec}: {e}') from None
    self.name = dataset_name(self.source, spec)


class TrainingEvals:
  """The run's evaluations, opened before the first step (a bad spec stops the run then)."""

  def __init__(self, config, tokenizer):
    self.config, self.tokenizer = config, tokenizer
    self.tasks = [Task(kind, spec, config) for kind, spec in eval_tasks(config.eval)]
    self.templates = load_templates(config.eval.templates) if any(
        t.kind == 'zeroshot' for t in self.tasks) else []
    self.graphdef = self.mesh = self._embedder = None
    self.last: dict[str, float] | None = None  # the metrics of the latest evaluation

  def use_model(self, graphdef, mesh) -> None:
    """The model's graph and the mesh its state lives on (known once the run is built)."""
    self.graphdef, self.mesh = graphdef, mesh

  def due(self, step: int) -> bool:
    """Whether the run evaluates at `step`: a multiple of eval.every, or the final step."""
    every = self.config.eval.every
    return bool(self.tasks) and (step == self.config.total_steps
                                 or (every > 0 and step % every == 0))

  def run(self, step: int, state) -> dict[str, float]:
    """Every task on `state`'s parameters -> {'<kind>/<dataset>/<metric>': value}; prints one
    line per task (process 0). Every process takes part (the embedding is sharded)."""
    if self._embedder is None:
      self._embedder = Embedder(self.graphdef, state.params, self.mesh, state.batch_stats,
                                progress=False)
    self._embedder.params, self._embedder.batch_stats = state.params, state.batch_stats or {}
    found = {}
    for task in self.tasks:
      start = time.perf_counter()
      metrics = self._evaluate(task)
      metrics.pop('confusion', None)
      found.update({f'{task.kind}/{task.name}/{k}': float(v) for k, v in metrics.items()})
      if jax.process_index() == 0:
        shown = '  '.join(f'{k} {v:.4f}' for k, v in metrics.items() if isinstance(v, float))
        print(f'{task.kind} {task.name} step {step}: {shown}  ({metrics["num_examples"]} '
              f'examples, {time.perf_counter() - start:.1f}s)', flush=True)
    self.last = found
    return found

  def _evaluate(self, task: Task) -> dict:
    model = self.config.model
    # A Matryoshka run is also scored at each of its prefixes (`acc1@64`, ...), as the offline
    # jobs score it by default.
    dims = dict(image_size=model.image_size, context_length=model.context_length,
                batch_size=self.config.eval.batch_size, dims=parse_dims(None, self.config))
    if task.kind == 'zeroshot':
      return evaluate_zeroshot(self._embedder, self.tokenizer, task.source, self.templates,
                               classnames=task.classnames, **dims)
    return evaluate_retrieval(self._embedder, self.tokenizer, task.source, **dims)

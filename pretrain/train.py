"""Trains a dual encoder from a config file; re-running the same command resumes.

  python -m pretrain.train --config PATH[:ARG] --workdir DIR [--config.FIELD=VALUE ...]
"""

from pretrain import host_memory

if __name__ == '__main__':  # first, before jax loads: restarting the process costs ~50 ms here
  host_memory.restart_with_huge_page_malloc()

import os
import sys
import time
import zlib

import jax
import numpy as np

from data.records import BAD_KINDS, BadRecord
from data.sources import index_cache_dir, open_source
from data.tokenizer import get_tokenizer, save_to_workdir
from pretrain import distributed, partial, sharding, validate
from pretrain.checkpoint import Checkpointer, CheckpointWriteError
from pretrain.config_cli import parse_args, save_config
from pretrain.errors import ConfigError
from pretrain.logger import MetricsLogger, Throughput
from pretrain.optim import make_optimizer
from pretrain.prefault import for_compiled_step
from pretrain.run_control import StopRequest, WorkdirLock, quiet_background_errors
from pretrain.train_step import StepBuilder


def batch_fingerprint(local_batch: dict) -> int:
  """crc32 of this process's batch bytes: a cheap record of exactly which data a step saw."""
  crc = 0
  for key in sorted(local_batch):
    crc = zlib.crc32(np.ascontiguousarray(local_batch[key]).tobytes(), crc)
  return crc


def prepare_run(config, workdir: str):
  """Validates, locks the workdir, writes config.json and the tokenizer, builds the dataset."""
  shape = validate.check_training(config, jax.device_count(), jax.process_count())
  validate.check_workdir(workdir)
  # Taken before anything in the workdir is written, so a second trainer changes nothing.
  lock = WorkdirLock(workdir) if jax.process_index() == 0 else None
  tokenizer = get_tokenizer(config.data.tokenizer, config.data.lowercase)
  validate.check_vocab(tokenizer.vocab_size, config.model.vocab_size, config.data.tokenizer)
  source = open_source(config.data.train, config.model.image_size, config.seed,
                       cache_dir=index_cache_dir(workdir), max_pixels=config.data.max_pixels)
  problems = getattr(source, 'problems', [])
  if problems and config.data.on_bad_record == 'error':
    raise problems[0]
  for problem in problems:
    print(f'warning: {problem}', file=sys.stderr, flush=True)
  if config.data.workers > 0:  # grain's worker processes read absl flags.
    from absl import flags
    flags.FLAGS.mark_as_parsed()
  if jax.process_index() == 0:
    save_config(config, os.path.join(workdir, 'config.json'))
    save_to_workdir(config.data.tokenizer, workdir)
  from data.pipeline import train_dataset
  dataset = train_dataset(source, tokenizer, config.data, image_size=config.model.image_size,
                          context_length=config.model.context_length,
                          global_batch=config.batch_size, seed=config.seed,
                          process_index=jax.process_index(), process_count=jax.process_count())
  return shape, tokenizer, dataset, problems, lock


def bad_record_counts(state_counts, problems) -> dict[str, int]:
  """Bad records by kind: those skipped in batches (all processes) plus broken shards."""
  counts = {kind: int(n) for kind, n in zip(BAD_KINDS, np.asarray(state_counts))}
  for problem in problems:
    counts[problem.kind] += 1
  return {kind: n for kind, n in counts.items() if n}


class NonFiniteError(RuntimeError):
  """Too many non-finite updates in a row."""


def restore_or_init(ckpt: Checkpointer, latest: int | None, builder: StepBuilder, data_iter,
                    workdir: str):
  """Checkpoint `latest`'s state (moving the data iterator), or a fresh one when None.

  A fresh state takes `config.init_from`'s parameters where `init_from_include` says; a resumed
  run's own checkpoint always wins over init_from.
  """
  if latest is None:
    state = builder.init_state()
    if builder.config.init_from:
      state['params'] = partial.init_from(builder.config, state['params'],
                                          builder.state_shardings['params'], builder.mesh)
    return state
  state = ckpt.restore(latest, builder.abstract_state, data_iter)
  if jax.process_index() == 0:
    print(f'resumed from {workdir}/checkpoints/{latest}', flush=True)
  return state


def train(config, workdir: str) -> dict | None:
  """Runs (or resumes) training to `config.total_steps`; returns the final eval metrics."""
  shape, tokenizer, dataset, problems, lock = prepare_run(config, workdir)
  try:
    ckpt = Checkpointer(workdir, config.keep_checkpoints)
    latest = ckpt.latest_step()
    if latest is not None and latest >= config.total_steps:
      if jax.process_index() == 0:
        print(f'run in {workdir} already finished: checkpoint at step {latest} '
              f'(total_steps={config.total_steps}); nothing to do', flush=True)
      ckpt.close()
      return None
    mesh = sharding.make_mesh(shape)
    tx, schedule = make_optimizer(config.optim, config.total_steps)
    builder = StepBuilder(config, mesh, tx, schedule)
    data_iter = iter(dataset)
    state = restore_or_init(ckpt, latest, builder, data_iter, workdir)
    state, finished = run_loop(config, workdir, builder, mesh, ckpt, data_iter, state, problems)
    ckpt.close()
    if not finished:
      return None
    return final_eval(config, builder, state['params'], tokenizer, mesh)
  finally:
    if lock:
      lock.release()


def run_loop(config, workdir, builder, mesh, ckpt, data_iter, state, problems):
  """Steps until total_steps, SIGTERM or exit_after_step; -> (state, reached total_steps)."""
  step_fn = prefault = None  # compiled ahead of the first step: its freed memory goes back first
  is_main = jax.process_index() == 0
  logger = MetricsLogger(workdir, config.total_steps, enabled=is_main)
  stop = StopRequest()
  step = int(jax.device_get(state['step']))
  timer = Throughput(step)
  try:
    while step < config.total_steps:
      local = next(data_iter)
      batch = sharding.global_batch(local, mesh)
      if step_fn is None:
        step_fn = builder.jit_step().lower(state, batch).compile()
        host_memory.release_freed_memory()
        prefault = for_compiled_step(step_fn, config.prefault_step_memory)
      # Pre-faults while the step runs; the loop waits for the step just below.
      state, metrics = prefault.dispatch(step_fn, state, batch)
      if check_skipped(config, state, metrics, step + 1, ckpt):
        continue
      step += 1
      if step % config.log_every == 0 or step == config.total_steps:
        log_step(logger, timer, config, step, state, metrics, batch_fingerprint(local), problems)
      stopping = step == config.exit_after_step or stop.requested
      if step % config.checkpoint_every == 0 or step == config.total_steps or stopping:
        ckpt.save(step, state, data_iter)
      if stopping:
        ckpt.wait()
        if is_main:
          why = 'SIGTERM' if stop.requested else f'exit_after_step={step}'
          print(f'{why}: checkpointed step {step} and stopped; re-run the same command to resume',
                flush=True)
        return state, False
  finally:
    stop.restore()
    logger.close()
  return state, True


def check_skipped(config, state, metrics, step: int, ckpt: Checkpointer) -> bool:
  """Whether the update was skipped as non-finite; raises after too many in a row."""
  if not bool(jax.device_get(metrics['skipped'])):
    return False
  consecutive = int(jax.device_get(state['consecutive_skips']))
  if jax.process_index() == 0:
    print(f'warning: step {step}: loss {float(metrics["loss"]):.4g}, grad norm '
          f'{float(metrics["grad_norm"]):.4g}: non-finite, update skipped '
          f'({consecutive} in a row)', file=sys.stderr, flush=True)
  if consecutive >= config.max_consecutive_skips:
    ckpt.wait()
    last = ckpt.latest_step()
    raise NonFiniteError(
        f'{consecutive} non-finite updates in a row at step {step} (max_consecutive_skips='
        f'{config.max_consecutive_skips}); stopped. The last good checkpoint is step {last}; '
        'check the data and the learning rate, then re-run to resume from it')
  return True


def log_step(logger, timer, config, step, state, metrics, fingerprint, problems) -> None:
  """One metrics.jsonl row and one progress line."""
  metrics, bad, skipped = jax.device_get(
      (metrics, state['bad_records'], state['skipped_updates']))  # one round trip
  metrics = {k: float(v) for k, v in metrics.items()}
  bad, skipped = bad_record_counts(bad, problems), int(skipped)
  examples_per_s, seconds_per_step = timer.mark(step, config.batch_size)
  logger.write(step, {**metrics, 'examples_per_s': examples_per_s, 'batch_crc32': fingerprint,
                      'skipped_updates': skipped, 'bad_records': sum(bad.values()),
                      **{f'bad_records/{k}': n for k, n in bad.items()}})
  logger.progress(step, metrics, examples_per_s, seconds_per_step, bad, skipped)


def final_eval(config, builder, params, tokenizer, mesh) -> dict | None:
  """Zero-shot accuracy of the final parameters on `config.eval.zeroshot`, if set."""
  if not config.eval.zeroshot:
    return None
  from eval.embed import Embedder
  from eval.templates import load_templates
  from eval.zeroshot_lib import evaluate_zeroshot
  source = open_source(config.eval.zeroshot, config.model.image_size, config.seed)
  start = time.perf_counter()
  metrics = evaluate_zeroshot(
      Embedder(builder.graphdef, params, mesh), tokenizer, source,
      load_templates(config.eval.templates), image_size=config.model.image_size,
      context_length=config.model.context_length, batch_size=config.eval.batch_size)
  if jax.process_index() == 0:
    chance = 1.0 / len(source.classnames)
    print(f'zero-shot {source.name}: acc1 {metrics["acc1"]:.4f}  acc5 {metrics.get("acc5", 0):.4f}  '
          f'mean_per_class_recall {metrics["mean_per_class_recall"]:.4f}  '
          f'({metrics["num_examples"]} images, {len(source.classnames)} classes, '
          f'chance {chance:.4f}, {time.perf_counter() - start:.1f}s)', flush=True)
  return metrics


def main(argv: list[str]) -> int:
  """Command-line entry point; configuration errors print one line and exit 2."""
  try:
    config, flags = parse_args(argv)
    quiet_background_errors()
    distributed.maybe_initialize()
    train(config, flags['workdir'])
  except ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except CheckpointWriteError as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.stdout.flush()
    # orbax's writer threads are broken now; their exit hooks would only add tracebacks.
    os._exit(1)
  except (BadRecord, NonFiniteError) as e:  # data.on_bad_record='error'; a diverged run
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))

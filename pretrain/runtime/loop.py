"""The training loop: step, skip non-finite updates, log, checkpoint, stop on request."""

import copy
import sys
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from data.records import BAD_KINDS
from pretrain.backends.cpu import host_memory
from pretrain.backends.cpu.prefault import for_compiled_step
from pretrain.parallel import sharding
from pretrain.runtime.checkpoint import Checkpointer
from pretrain.runtime.logger import MetricsLogger, Throughput
from pretrain.runtime.run_control import StopRequest


def batch_fingerprint(local_batch: dict) -> int:
  """crc32 of this process's batch bytes: a cheap record of exactly which data a step saw."""
  crc = 0
  for key in sorted(local_batch):
    crc = zlib.crc32(np.ascontiguousarray(local_batch[key]).tobytes(), crc)
  return crc


def bad_record_counts(state_counts, problems) -> dict[str, int]:
  """Bad records by kind: those skipped in batches (all processes) plus broken shards."""
  counts = {kind: int(n) for kind, n in zip(BAD_KINDS, np.asarray(state_counts))}
  for problem in problems:
    counts[problem.kind] += 1
  return {kind: n for kind, n in counts.items() if n}


class NonFiniteError(RuntimeError):
  """Too many non-finite updates in a row."""


def nonfinite_step(builder):
  """The train step with its loss times NaN, compiled apart from the real one.

  `config.debug.nonfinite_at_attempts` (tests of the skip rule) runs it in place of the real step
  at chosen attempts: it skips its update like a diverged step would, and the real step carries
  no test code.
  """
  poisoned, loss_fn = copy.copy(builder), builder.loss_fn

  def nan_loss(*args):
    loss, metrics = loss_fn(*args)
    return loss * jnp.nan, metrics

  poisoned.loss_fn = nan_loss
  return poisoned.jit_step()


def run_loop(config, workdir, builder, mesh, ckpt, data_iter, state, problems):
  """Steps until total_steps, SIGTERM or exit_after_step; -> (state, reached total_steps)."""
  step_fn = prefault = None  # compiled ahead of the first step: its freed memory goes back first
  is_main = jax.process_index() == 0
  logger = MetricsLogger(workdir, config.total_steps, enabled=is_main)
  stop = StopRequest()
  step = int(jax.device_get(state.step))
  timer = Throughput(step)
  poison_at = set(config.debug.nonfinite_at_attempts)  # 1-based step calls (test-only)
  attempt = step + int(jax.device_get(state.skipped_updates))
  poisoned = nonfinite_step(builder) if poison_at else None
  try:
    while step < config.total_steps:
      local = next(data_iter)
      batch = sharding.global_batch(local, mesh)
      if step_fn is None:
        step_fn = builder.jit_step().lower(state, batch).compile()
        host_memory.release_freed_memory()
        # The builder's config is resolved for its platform: False on GPU and TPU.
        prefault = for_compiled_step(step_fn, builder.config.prefault_step_memory)
      attempt += 1
      if attempt in poison_at:
        state, metrics = poisoned(state, batch)
      else:  # Pre-faults while the step runs; the loop waits for the step just below.
        state, metrics = prefault.dispatch(step_fn, state, batch)
      if check_skipped(config, state, metrics, step + 1, ckpt):
        continue
      step += 1
      if step % config.log_every == 0 or step == config.total_steps:
        log_step(logger, timer, config, step, state, metrics, batch_fingerprint(local), problems)
      stopping = step == config.exit_after_step or stop.requested
      if step % config.checkpoint_every == 0 or step == config.total_steps or stopping:
        logger.flush()  # a resume from this checkpoint finds every row up to it (buckets buffer)
        ckpt.save(step, state, data_iter)
      if stopping:
        ckpt.wait()
        if is_main:
          why = stop.signal_name if stop.requested else f'exit_after_step={step}'
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
  consecutive = int(jax.device_get(state.consecutive_skips))
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
      (metrics, state.bad_records, state.skipped_updates))  # one round trip
  metrics = {k: float(v) for k, v in metrics.items()}
  bad, skipped = bad_record_counts(bad, problems), int(skipped)
  examples_per_s, seconds_per_step = timer.mark(step, config.batch_size)
  logger.write(step, {**metrics, 'examples_per_s': examples_per_s, 'batch_crc32': fingerprint,
                      'skipped_updates': skipped, 'bad_records': sum(bad.values()),
                      **{f'bad_records/{k}': n for k, n in bad.items()}})
  logger.progress(step, metrics, examples_per_s, seconds_per_step, bad, skipped)

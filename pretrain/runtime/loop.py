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
from pretrain.runtime.startup import compiling


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


def run_loop(config, workdir, builder, mesh, ckpt, data_iter, state, problems, evals=None):
  """Steps until total_steps, SIGTERM or exit_after_step; -> (state, reached total_steps).

  `evals` (eval.in_training.TrainingEvals, or None) runs at the steps it is due, before that
  step's checkpoint, so a run stopped in an evaluation evaluates again when resumed; not when a
  signal stops the run (preemption leaves little time), nor after a skipped update.

  The host never waits on the devices between the steps it must act on (log, evaluate,
  checkpoint, stop: `must_sync`): it dispatches each step, puts the next batch on the devices
  while that step runs, and reads each update's non-finite flag only at the next such step
  (`UpdateLog.settle`), where the skip rule replays them in order. The host's step count is an
  upper bound in between (a skipped update does not count), so every step that must be acted on
  is reached in sync.
  """
  step_fn = prefault = None  # compiled ahead of the first step: its freed memory goes back first
  is_main = jax.process_index() == 0
  logger = MetricsLogger(workdir, config.total_steps, enabled=is_main, config=config)
  stop = StopRequest()
  step, consecutive, skipped = (int(x) for x in jax.device_get(
      (state.step, state.consecutive_skips, state.skipped_updates)))
  timer = Throughput(step)
  poison_at = set(config.debug.nonfinite_at_attempts)  # 1-based step calls (test-only)
  attempt = step + skipped
  poisoned = nonfinite_step(builder) if poison_at else None
  updates = UpdateLog(config, step, consecutive, ckpt)
  upper, local, batch = step, None, None  # `upper`: the steps if no update since a sync skipped
  try:
    while upper < config.total_steps:
      if batch is None:
        local = next(data_iter)
        batch = sharding.global_batch(local, mesh)
      if step_fn is None:
        with compiling('the train step'):
          step_fn = builder.jit_step().lower(state, batch).compile()
        host_memory.release_freed_memory()
        # The builder's config is resolved for its platform: False on GPU and TPU.
        prefault = for_compiled_step(step_fn, builder.config.prefault_step_memory)
      attempt += 1
      if attempt in poison_at:
        state, metrics = poisoned(state, batch)
      else:  # Pre-faults while the step runs (CPU only).
        state, metrics = prefault.dispatch(step_fn, state, batch)
      updates.add(metrics)
      upper += 1
      stepped, stopping = local, stop.requested
      batch = None
      if not (stopping or may_checkpoint(config, upper)):
        # The next step's batch, fetched and sent while this step runs. Never before a
        # checkpoint: the saved data iterator must stand just after the last batch stepped.
        local = next(data_iter)
        batch = sharding.global_batch(local, mesh)
      if not (stopping or must_sync(config, upper, evals)):
        continue
      last_skipped, counters = updates.settle(state, metrics)  # raises after too many skips
      upper = step = updates.step
      if last_skipped:  # as before: a skipped update logs, saves and stops nothing
        continue
      if step % config.log_every == 0 or step == config.total_steps:
        log_step(logger, timer, config, step, counters, batch_fingerprint(stepped), problems)
      if evals is not None and evals.due(step) and not stop.requested:
        logger.write(step, evals.run(step, state))
        timer = Throughput(step)  # examples/s counts training time only
      stopping = step == config.exit_after_step or stopping
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


def may_checkpoint(config, step: int) -> bool:
  """Whether the loop may checkpoint at `step` (if its update was applied)."""
  return (step % config.checkpoint_every == 0 or step >= config.total_steps
          or step == config.exit_after_step)


def must_sync(config, step: int, evals=None) -> bool:
  """Whether the host must know the applied updates at `step`: it logs, evaluates, saves or
  stops there."""
  return (step % config.log_every == 0 or may_checkpoint(config, step)
          or (evals is not None and evals.due(step)))


class UpdateLog:
  """The non-finite flags of the updates dispatched since the host last read them, and the rule
  that stops after `max_consecutive_skips` in a row, applied to them in order once read."""

  def __init__(self, config, step: int, consecutive: int, ckpt: Checkpointer):
    self.config, self.ckpt = config, ckpt
    self.step, self.consecutive = step, consecutive  # as of the last settle
    self._pending = []  # (skipped, loss, grad norm) device scalars, one per dispatched update

  def add(self, metrics: dict) -> None:
    """Records one dispatched update (nothing is read)."""
    self._pending.append((metrics['skipped'], metrics['loss'], metrics['grad_norm']))

  def settle(self, state, metrics) -> tuple[bool, tuple]:
    """Reads the recorded updates and the counters the log needs in one device->host round trip;
    -> (whether the last update was skipped, (metrics, bad_records, skipped_updates) on the host).

    Each skipped update warns, and too many in a row raise NonFiniteError, with the step and
    message the step-by-step rule gave.
    """
    pending, host = jax.device_get((self._pending, (metrics, state.bad_records,
                                                    state.skipped_updates, state.step)))
    self._pending = []
    for skipped, loss, grad_norm in pending:
      if skipped:
        self.consecutive += 1
        check_skipped(self.config, self.step + 1, loss, grad_norm, self.consecutive, self.ckpt)
      else:
        self.step, self.consecutive = self.step + 1, 0
    if int(host[3]) != self.step:  # the replay and the state's own count must agree
      raise RuntimeError(f'loop bookkeeping: state.step {int(host[3])} != {self.step}')
    return bool(pending[-1][0]), host[:3]


def check_skipped(config, step: int, loss, grad_norm, consecutive: int,
                  ckpt: Checkpointer) -> None:
  """Warns of one skipped non-finite update; raises after too many in a row."""
  if jax.process_index() == 0:
    print(f'warning: step {step}: loss {float(loss):.4g}, grad norm '
          f'{float(grad_norm):.4g}: non-finite, update skipped '
          f'({consecutive} in a row)', file=sys.stderr, flush=True)
  if consecutive >= config.max_consecutive_skips:
    ckpt.wait()
    last = ckpt.latest_step()
    raise NonFiniteError(
        f'{consecutive} non-finite updates in a row at step {step} (max_consecutive_skips='
        f'{config.max_consecutive_skips}); stopped. The last good checkpoint is step {last}; '
        'check the data and the learning rate, then re-run to resume from it')


def log_step(logger, timer, config, step, counters, fingerprint, problems) -> None:
  """One metrics.jsonl row and one progress line, from host values (`UpdateLog.settle`)."""
  metrics, bad, skipped = counters
  metrics = {k: float(v) for k, v in metrics.items()}
  bad, skipped = bad_record_counts(bad, problems), int(skipped)
  examples_per_s, seconds_per_step = timer.mark(step, config.batch_size)
  logger.write(step, {**metrics, 'examples_per_s': examples_per_s, 'batch_crc32': fingerprint,
                      'skipped_updates': skipped, 'bad_records': sum(bad.values()),
                      **{f'bad_records/{k}': n for k, n in bad.items()}})
  logger.progress(step, metrics, examples_per_s, seconds_per_step, bad, skipped)

"""Trains a dual encoder from a config file; re-running the same command resumes.

  python -m pretrain.train --config PATH[:ARG] --workdir DIR [--config.FIELD=VALUE ...]

  --config PATH[:ARG]    a config file's get_config(ARG), e.g. configs/demo.py or configs/demo.py:tiny
  --workdir DIR          the run's folder: config, tokenizer, checkpoints, metrics (resumed if present)
  --config.FIELD=VALUE   overrides a config field, e.g. --config.batch_size=4096
  --allow_config_change  resume even though fields that define the run (model, loss, optimizer,
                         data, batch) differ from the workdir's config.json (recorded)

SIGTERM or Ctrl-C checkpoints the current step and exits; a second Ctrl-C exits at once.
"""

from pretrain.backends.cpu import host_memory

if __name__ == '__main__':  # first, before jax loads: a restart then costs little
  host_memory.restart_with_huge_page_malloc()

import os
import sys

import jax

from data import storage
from data.errors import ConfigError
from data.records import BadRecord, BrokenSource
from data.sources import index_cache_dir, open_source
from data.tokenizer import get_tokenizer, save_to_workdir
from data.tokenizer_fit import check_fit
from pretrain import backends
from pretrain.config import identity, validate
from pretrain.config.cli import parse_args, save_config
from pretrain.parallel import sharding
from pretrain.runtime import compile_cache, distributed, startup
from pretrain.runtime.checkpoint import Checkpointer, CheckpointWriteError
from pretrain.runtime.init_from import init_from
from pretrain.runtime.loop import NonFiniteError, run_loop
from pretrain.runtime.run_control import lock_workdir, quiet_background_errors
from pretrain.step.optim import make_optimizer
from pretrain.step.state import merge_variables, split_variables
from pretrain.step.train_step import StepBuilder


def prepare_run(config, workdir: str, allow_config_change: bool):
  """Validates, locks the workdir, checks the run's identity, builds the dataset."""
  shape = validate.check_training(config, jax.device_count(), jax.process_count())
  backends.check_xla_flags(config, jax.default_backend())
  # The backend choices (op set, attention, tower slices) this platform can run, checked before
  # the workdir is touched: the StepBuilder resolves them again, the same way.
  backends.resolve_for_platform(config, jax.default_backend())
  validate.check_workdir(workdir)
  # Taken before anything in the workdir is written, so a second trainer changes nothing.
  lock = lock_workdir(workdir) if jax.process_index() == 0 else None
  try:
    return (shape, *open_run(config, workdir, allow_config_change), lock)
  except BaseException:  # a refused run frees its workdir at once (a bucket lease would linger)
    if lock:
      lock.release()
    raise


def open_run(config, workdir: str, allow_config_change: bool):
  """(tokenizer, dataset, problems, changes, source): the run's identity checked, its data
  opened."""
  changes = identity.check_resume(workdir, config, allow_config_change)
  tokenizer = get_tokenizer(config.data.tokenizer, config.data.lowercase)
  validate.check_vocab(tokenizer.vocab_size, config.model.vocab_size, config.data.tokenizer)
  source = open_source(config.data.train, config.model.image_size, config.seed,
                       cache_dir=index_cache_dir(workdir), max_pixels=config.data.max_pixels,
                       index_dir=config.data.get('index_dir') or None)
  fit = check_fit(tokenizer, config.data.tokenizer, source, config.data.max_unknown_token_rate)
  if fit:
    print(f'warning: {fit}', file=sys.stderr, flush=True)
  problems = getattr(source, 'problems', [])
  if problems and config.data.on_bad_record == 'error':
    raise problems[0]
  for problem in problems:
    print(f'warning: {problem}', file=sys.stderr, flush=True)
  if config.data.workers > 0:  # grain's worker processes read absl flags.
    from absl import flags
    flags.FLAGS.mark_as_parsed()
  from data.pipeline import corpus_statistics, train_dataset
  print(corpus_statistics(source, config.batch_size, jax.process_index(), jax.process_count()),
        flush=True)
  dataset = train_dataset(source, tokenizer, config.data, image_size=config.model.image_size,
                          context_length=config.model.context_length,
                          global_batch=config.batch_size, seed=config.seed,
                          process_index=jax.process_index(), process_count=jax.process_count())
  return tokenizer, dataset, problems, changes, source


def record_run_config(config, workdir: str, changes: dict, step: int | None,
                      allowed: bool) -> None:
  """config.json, the tokenizer and the config history, once the state restored (or was made):
  a run refused for a changed model or a shape mismatch leaves its workdir as it was."""
  if jax.process_index() != 0:
    return
  identity.record_changes(workdir, changes, step, allowed and any(
      not identity.may_change(name) for name in changes))
  save_config(config, storage.join(workdir, 'config.json'))
  save_to_workdir(config.data.tokenizer, workdir)


def restore_or_init(ckpt: Checkpointer, latest: int | None, builder: StepBuilder, data_iter,
                    workdir: str):
  """Checkpoint `latest`'s state (moving the data iterator), or a fresh one when None.

  A fresh state takes `config.init_from`'s parameters where `init_from_include` says; a resumed
  run's own checkpoint always wins over init_from.
  """
  if latest is None:
    state = builder.init_state()
    if builder.config.init_from:
      shardings = builder.state_shardings
      variables = init_from(builder.config, merge_variables(state.params, state.batch_stats),
                            merge_variables(shardings.params, shardings.batch_stats), builder.mesh)
      params, batch_stats = split_variables(variables, state.batch_stats)
      state = state.replace(params=params, batch_stats=batch_stats)
    return state
  state = ckpt.restore(latest, builder.abstract_state, data_iter)
  if jax.process_index() == 0:
    print(f'resumed from {workdir}/checkpoints/{latest}', flush=True)
  return state


def start_up_block(config, workdir: str, config_line: str, latest: int | None, mesh, builder,
                   source) -> list[str]:
  """The run's start-up block (pretrain.runtime.startup) from the live objects."""
  from data.pipeline import shard_files
  return startup.describe_run(
      workdir=workdir, config=config_line, resumed_from=latest,
      devices=startup.Devices.of(mesh),
      params=startup.count_params(builder.abstract_state.params),
      global_batch=config.batch_size, batch_ways=sharding.batch_parallelism(mesh),
      accum_steps=config.accum_steps, total_steps=config.total_steps,
      data=f'{config.data.train} -> ' + startup.describe_data(
          getattr(source, 'name', config.data.train), len(source), shard_files(source)))


def train(config, workdir: str, allow_config_change: bool = False,
          config_line: str = 'config: (given as an object)') -> dict | None:
  """Runs (or resumes) training to `config.total_steps`; returns the final step's eval metrics
  (config.eval; None without tasks or when stopped early).

  `config_line`: how the start-up block names the config (startup.describe_config).
  """
  if storage.is_bucket(workdir):  # gs://b/run/ and gs://b/run are one workdir
    workdir = storage.absolute(workdir)
  compile_cache.enable(config.compile_cache_dir, workdir)  # before the run's first compile
  shape, tokenizer, dataset, problems, changes, source, lock = prepare_run(config, workdir,
                                                                           allow_config_change)
  try:
    from eval.in_training import TrainingEvals  # eval builds on pretrain; imported when used
    evals = TrainingEvals(config, tokenizer)  # its sets opened: a bad one stops the run here
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
    startup.print_block(start_up_block(config, workdir, config_line, latest, mesh, builder,
                                       source))
    evals.use_model(builder.graphdef, mesh)
    data_iter = iter(dataset)
    state = restore_or_init(ckpt, latest, builder, data_iter, workdir)
    record_run_config(config, workdir, changes, latest, allow_config_change)
    state, finished = run_loop(config, workdir, builder, mesh, ckpt, data_iter, state, problems,
                               evals if evals.tasks else None)
    ckpt.close()
    return evals.last if finished and evals.tasks else None
  finally:
    if lock:
      lock.release()


def main(argv: list[str]) -> int:
  """Command-line entry point; configuration errors print one line and exit 2."""
  try:
    config, flags = parse_args(argv, usage=__doc__, switches=('allow_config_change',))
    quiet_background_errors()
    backends.set_xla_flags(config)  # before jax starts its backend, which reads XLA_FLAGS once
    distributed.maybe_initialize()
    overrides = [a[len('--config.'):] for a in argv if a.startswith('--config.')]
    train(config, flags['workdir'], flags.get('allow_config_change') == 'true',
          startup.describe_config(flags['config'], overrides))
  except ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except CheckpointWriteError as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.stdout.flush()
    # orbax's writer threads are broken now; their exit hooks would only add tracebacks.
    os._exit(1)
  except (BadRecord, BrokenSource, NonFiniteError) as e:  # on_bad_record='error'; diverged
    print(f'error: {e}', file=sys.stderr)
    return 1
  except KeyboardInterrupt:  # Before the loop's handler: nothing trained since the last checkpoint.
    print('\ninterrupted before training started; nothing to checkpoint', file=sys.stderr)
    return 130
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))

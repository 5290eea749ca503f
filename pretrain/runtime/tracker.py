"""Weights & Biases beside TensorBoard: the rows of metrics.jsonl, logged by process 0.

On when `config.log.wandb.project` is set and its mode is not 'disabled'. wandb is optional: it is
imported only then, and a config asking for it without it installed is refused at start-up in one
line. The tracker run's id is kept in WORKDIR/wandb_run_id.txt (through data/storage.py, so a
bucket workdir keeps it too): a resumed training run continues the same tracker run
(resume='allow'). Rows go in at their training step, and a row whose step is below the last one
the tracker run holds is not sent: wandb's steps never go backwards (a resume repeats the steps
after its checkpoint; an online tracker run already has them). One tracker run stays open per
process and workdir, so the trainer's final eval row joins the last training step; it is
finished when the process exits.
"""

import atexit
import os
import secrets

from data import storage
from data.errors import ConfigError

WANDB_VERSION = '0.31.0'  # the version tested (requirements.txt)
WANDB_MODES = ('online', 'offline', 'disabled')
RUN_ID_FILE = 'wandb_run_id.txt'

_OPEN: dict[str, 'WandbTracker'] = {}  # workdir -> its tracker run, open in this process


def wanted(wandb_config) -> bool:
  """Whether the config asks for a W&B run."""
  return bool(wandb_config.project) and wandb_config.mode != 'disabled'


def check_installed(config) -> None:
  """Refuses, in one line, a config asking for wandb where it is not installed."""
  if 'log' not in config or not wanted(config.log.wandb):
    return
  try:
    import wandb  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    raise ConfigError('config.log.wandb is set but wandb is not installed: '
                      f'pip install wandb=={WANDB_VERSION}') from None


def run_id(workdir: str) -> str:
  """The workdir's tracker run id: the one kept there, or a new one, kept from now on."""
  path = storage.join(workdir, RUN_ID_FILE)
  if storage.exists(path):
    kept = storage.read_text(path).strip()
    if kept:
      return kept
  new = secrets.token_hex(4)  # W&B run ids are [a-z0-9]; 8 characters as wandb's own
  storage.write_text(path, new + '\n')
  return new


class WandbTracker:
  """One W&B run for one workdir: `log(step, row)` at increasing steps."""

  def __init__(self, config, workdir: str):
    import wandb  # pylint: disable=import-outside-toplevel
    settings = config.log.wandb
    # Offline files (and wandb's logs) under WANDB_DIR if set, else in a local workdir's wandb/.
    local = None if os.environ.get('WANDB_DIR') or storage.is_bucket(workdir) else workdir
    self.run = wandb.init(
        project=settings.project, entity=settings.entity or None, name=settings.name or None,
        mode=settings.mode, id=run_id(workdir), resume='allow', dir=local,
        config=config.to_dict(), allow_val_change=True,  # a resume may change some fields
        settings=wandb.Settings(console='off'))  # progress lines stay ours, unwrapped
    self.last_step = int(self.run.step)  # a resumed online run: the step after its last one

  def log(self, step: int, row: dict) -> None:
    """Sends one row at `step` (a step the tracker run has passed is skipped)."""
    if step < self.last_step:
      return
    self.run.log(row, step=step)
    self.last_step = step

  def finish(self) -> None:
    """Ends the tracker run (uploads what is left, or closes the offline files)."""
    self.run.finish()


def open_tracker(config, workdir: str) -> WandbTracker | None:
  """This process's tracker run of `workdir` (opened on first use), or None when not wanted."""
  if 'log' not in config or not wanted(config.log.wandb):
    return None
  tracker = _OPEN.get(workdir)
  if tracker is None:
    finish_all()  # wandb holds one run per process
    tracker = _OPEN[workdir] = WandbTracker(config, workdir)
    # Registered after wandb's own exit hook, so it runs first (atexit is last-in, first-out).
    atexit.unregister(finish_all)
    atexit.register(finish_all)
  return tracker


def finish_all() -> None:
  """Finishes every open tracker run (at exit, or before another workdir's)."""
  while _OPEN:
    _OPEN.popitem()[1].finish()

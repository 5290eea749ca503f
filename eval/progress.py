"""Progress of a long count (examples embedded): a bar on a terminal, a plain line every N s else.

On a TTY the bar redraws one carriage-return line; into a file or a pipe (a batch job's log) a
line every `every_s` seconds (default EVAL_PROGRESS_SECONDS from the environment, else 10), so
logs stay short. Both end with one line naming the total, the time taken and the rate.
"""

import os
import sys
import time
from typing import Callable, TextIO

from pretrain.runtime.logger import fmt_duration

ENV_SECONDS = 'EVAL_PROGRESS_SECONDS'
DEFAULT_SECONDS = 10.0
BAR_WIDTH = 24


def interval_seconds(every_s: float | None = None) -> float:
  """`every_s` if given, else $EVAL_PROGRESS_SECONDS, else 10."""
  if every_s is not None:
    return float(every_s)
  try:
    return float(os.environ.get(ENV_SECONDS, DEFAULT_SECONDS))
  except ValueError:  # a mistyped variable must not stop an eval job
    return DEFAULT_SECONDS


class Progress:
  """Counts `total` items done in steps; prints to `stream` (stderr by default)."""

  def __init__(self, total: int, what: str = 'examples', stream: TextIO | None = None,
               every_s: float | None = None, enabled: bool = True,
               clock: Callable[[], float] = time.monotonic):
    self.total, self.what, self.enabled = total, what, enabled
    self.stream = sys.stderr if stream is None else stream
    self.every_s, self._clock = interval_seconds(every_s), clock
    self.tty = bool(getattr(self.stream, 'isatty', lambda: False)())
    self.done = 0
    self._start = self._shown = clock()

  def _status(self, now: float) -> str:
    """'512/960 (53%)  85.3 examples/s  ETA 0:00:05'."""
    elapsed = max(now - self._start, 1e-9)
    rate = self.done / elapsed
    eta = fmt_duration((self.total - self.done) / rate) if rate > 0 else '?'
    share = 100 * self.done // max(self.total, 1)
    return f'{self.done}/{self.total} ({share}%)  {rate:.1f} {self.what}/s  ETA {eta}'

  def update(self, n: int) -> None:
    """`n` more items are done."""
    self.done += n
    if not self.enabled or self.done >= self.total:
      return
    now = self._clock()
    if self.tty:
      filled = BAR_WIDTH * self.done // max(self.total, 1)
      bar = '#' * filled + '.' * (BAR_WIDTH - filled)
      self.stream.write(f'\rembedding {self.what} [{bar}] {self._status(now)}')
      self.stream.flush()
    elif now - self._shown >= self.every_s:
      self._shown = now
      self.stream.write(f'embedding {self.what}: {self._status(now)}\n')
      self.stream.flush()

  def close(self) -> None:
    """The final line: the total, the time taken and the rate."""
    if not self.enabled:
      return
    elapsed = max(self._clock() - self._start, 1e-9)
    end = '\r' if self.tty else ''
    self.stream.write(f'{end}embedded {self.done}/{self.total} {self.what} in {elapsed:.1f} s '
                      f'({self.done / elapsed:.1f} {self.what}/s)' + (' ' * 20 if self.tty else '')
                      + '\n')
    self.stream.flush()

"""Embedding progress: a line every N seconds into a log, a bar on a terminal, a final total."""

import io

from eval.progress import Progress, interval_seconds


class Clock:
  """A clock the test advances (the lines depend on elapsed time)."""

  def __init__(self):
    self.now = 0.0

  def __call__(self) -> float:
    return self.now


def test_a_log_gets_a_line_every_n_seconds_and_the_total():
  stream, clock = io.StringIO(), Clock()
  progress = Progress(100, 'images', stream=stream, every_s=10, clock=clock)
  for _ in range(10):
    clock.now += 3.0
    progress.update(10)
  progress.close()
  lines = stream.getvalue().splitlines()
  # Lines at t=12 s (40 done) and t=24 s (80 done); none at the end (the total line says it).
  assert lines == [
      'embedding images: 40/100 (40%)  3.3 images/s  ETA 0:00:18',
      'embedding images: 80/100 (80%)  3.3 images/s  ETA 0:00:06',
      'embedded 100/100 images in 30.0 s (3.3 images/s)',
  ]
  assert '\r' not in stream.getvalue()


def test_a_terminal_gets_a_redrawn_bar():
  class Tty(io.StringIO):
    def isatty(self):
      return True

  stream, clock = Tty(), Clock()
  progress = Progress(4, 'texts', stream=stream, every_s=10, clock=clock)
  for _ in range(4):
    clock.now += 1.0
    progress.update(1)
  progress.close()
  text = stream.getvalue()
  assert text.count('\n') == 1 and text.endswith('\n')
  frames = text.split('\r')[1:]
  assert [f.split('] ')[1].split(' ')[0] for f in frames[:3]] == ['1/4', '2/4', '3/4']
  assert frames[1].startswith('embedding texts [' + '#' * 12 + '.' * 12 + ']')
  assert frames[-1].startswith('embedded 4/4 texts in 4.0 s (1.0 texts/s)')


def test_interval_from_argument_environment_or_default(monkeypatch):
  monkeypatch.delenv('EVAL_PROGRESS_SECONDS', raising=False)
  assert interval_seconds() == 10.0 and interval_seconds(2) == 2.0
  monkeypatch.setenv('EVAL_PROGRESS_SECONDS', '0.5')
  assert interval_seconds() == 0.5 and interval_seconds(3) == 3.0

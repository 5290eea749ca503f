"""Progress lines, WORKDIR/metrics.jsonl and TensorBoard events (process 0 writes)."""

import json
import os
import time

import numpy as np

# Values that identify rather than measure. TensorBoard scalars are float32 (tensorboardX's
# simple_value), exact for integers up to 2**24 only (crc 1622306901 would show as 1622306944), and
# a checksum is compared, not plotted: TensorBoard gets these as text, digit for digit, every
# step. metrics.jsonl holds them exactly as well (JSON numbers read as float64).
IDENTIFIERS = frozenset({'batch_crc32'})


def _fmt_duration(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


class MetricsLogger:
  """Writes one row per logged step; prints a progress line."""

  def __init__(self, workdir: str, total_steps: int, enabled: bool = True):
    self.total_steps, self.enabled = total_steps, enabled
    self._jsonl = self._tb = None
    if enabled:
      self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, 'tb'))
      except ImportError:  # TensorBoard is optional; metrics.jsonl is the record.
        self._tb = None

  def write(self, step: int, metrics: dict) -> None:
    """Appends `metrics` at `step` to metrics.jsonl and TensorBoard."""
    if not self.enabled:
      return
    row = {'step': int(step), **{k: float(np.asarray(v)) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(row) + '\n')
    self._jsonl.flush()
    if self._tb is not None:
      for key, value in row.items():
        if key == 'step':
          continue
        if key in IDENTIFIERS:
          self._tb.add_text(key, str(int(value)), step)
        else:
          self._tb.add_scalar(key, value, step)
      self._tb.flush()

  def progress(self, step: int, metrics: dict, examples_per_s: float, seconds_per_step: float,
               bad_records: dict[str, int] | None = None, skipped_updates: int = 0) -> None:
    """Prints step/total, loss, temperature, accuracies, examples/s, ETA and skipped records."""
    if not self.enabled:
      return
    eta = _fmt_duration(seconds_per_step * (self.total_steps - step))
    bad = ''
    if bad_records:
      detail = ', '.join(f'{k} {n}' for k, n in sorted(bad_records.items()))
      bad = f'  skipped {sum(bad_records.values())} bad ({detail})'
    if skipped_updates:
      bad += f'  {skipped_updates} non-finite updates skipped'
    print(f'step {step}/{self.total_steps}  loss {metrics["loss"]:.4f}  '
          f'temp {metrics["temperature"]:.4f}  acc i2t {metrics["acc_i2t"]:.3f} '
          f't2i {metrics["acc_t2i"]:.3f}  {examples_per_s:.1f} ex/s  ETA {eta}{bad}', flush=True)

  def close(self) -> None:
    """Flushes and closes the files."""
    if self._jsonl:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


class Throughput:
  """Examples/s and seconds/step between two log points."""

  def __init__(self, start_step: int):
    self._time, self._step = time.perf_counter(), start_step

  def mark(self, step: int, batch_size: int) -> tuple[float, float]:
    """(examples/s, s/step) since the last mark (first call: since construction)."""
    now = time.perf_counter()
    steps = max(step - self._step, 1)
    elapsed = max(now - self._time, 1e-9)
    self._time, self._step = now, step
    return steps * batch_size / elapsed, elapsed / steps

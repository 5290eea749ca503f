"""Progress lines, WORKDIR/metrics.jsonl and TensorBoard events (process 0 writes).

Locally both files are appended and flushed at every logged step, as always. A bucket has no
append: rows and events are buffered and added to the end of their objects by
storage.append_bytes (on GCS a server-side compose, so each flush uploads only the new bytes and
a run's total upload grows with its rows, not their square). Flushes happen at most every
BUCKET_FLUSH_SECONDS (GCS allows about one update per second to an object, and each flush is a few
requests), before every checkpoint (see flush) and at close: a resumed run's history therefore
holds every row up to its checkpoint, and a SIGKILL loses only rows that the resume logs again.
"""

import json
import os
import shutil
import tempfile
import time

import numpy as np

from data import storage
from pretrain.runtime import tracker

BUCKET_FLUSH_SECONDS = 10.0

# Values that identify rather than measure. TensorBoard scalars are float32 (tensorboardX's
# simple_value), exact for integers up to 2**24 only (crc 1622306901 would show as 1622306944), and
# a checksum is compared, not plotted: TensorBoard gets these as text, digit for digit, every
# step. metrics.jsonl holds them exactly as well (JSON numbers read as float64).
IDENTIFIERS = frozenset({'batch_crc32'})


def fmt_duration(seconds: float) -> str:
  """H:MM:SS (negative durations as 0:00:00)."""
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


class MetricsLogger:
  """Writes one row per logged step; prints a progress line."""

  def __init__(self, workdir: str, total_steps: int, enabled: bool = True, config=None):
    self.total_steps, self.enabled = total_steps, enabled
    self._jsonl = self._tb = self._tb_upload = self._tracker = None
    if enabled:
      self._jsonl = AppendFile(storage.join(workdir, 'metrics.jsonl'))
      # config.log.wandb's tracker run, if asked for (pretrain/runtime/tracker.py).
      self._tracker = None if config is None else tracker.open_tracker(config, workdir)
      try:
        from tensorboardX import SummaryWriter
      except ImportError:  # TensorBoard is optional; metrics.jsonl is the record.
        return
      tb_dir = storage.join(workdir, 'tb')
      if storage.is_bucket(tb_dir):  # tensorboardX would re-upload the whole file at each flush
        self._tb_upload = EventUploader(tb_dir)
        tb_dir = self._tb_upload.local_dir
      self._tb = SummaryWriter(tb_dir)

  def write(self, step: int, metrics: dict) -> None:
    """Appends `metrics` at `step` to metrics.jsonl and TensorBoard."""
    if not self.enabled:
      return
    row = {'step': int(step), **{k: float(np.asarray(v)) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(row) + '\n')
    if self._tracker is not None:
      self._tracker.log(row['step'], {k: v for k, v in row.items() if k != 'step'})
    if self._tb is not None:
      for key, value in row.items():
        if key == 'step':
          continue
        if key in IDENTIFIERS:
          self._tb.add_text(key, str(int(value)), step)
        else:
          self._tb.add_scalar(key, value, step)
    self.flush(force=False)

  def flush(self, force: bool = True) -> None:
    """Makes the rows so far durable; in a bucket only when `force` or the interval has passed."""
    if not self.enabled:
      return
    if self._tb is not None:
      self._tb.flush()
    due = self._jsonl.flush(force)
    if self._tb_upload is not None and due:
      self._tb_upload.upload()

  def progress(self, step: int, metrics: dict, examples_per_s: float, seconds_per_step: float,
               bad_records: dict[str, int] | None = None, skipped_updates: int = 0) -> None:
    """Prints step/total, loss, temperature, accuracies, examples/s, ETA and skipped records."""
    if not self.enabled:
      return
    eta = fmt_duration(seconds_per_step * (self.total_steps - step))
    bad = ''
    if bad_records:
      detail = ', '.join(f'{k} {n}' for k, n in sorted(bad_records.items()))
      bad = f'  skipped {sum(bad_records.values())} bad ({detail})'
    if skipped_updates:
      bad += f'  {skipped_updates} non-finite updates skipped'
    # Matryoshka runs: the full-width loss, then the weighted sum over prefixes that is optimised.
    widths = [int(key[len('loss@'):]) for key in metrics if key.startswith('loss@')]
    loss = metrics[f'loss@{max(widths)}'] if widths else metrics['loss']
    summed = f'  mrl {metrics["loss"]:.4f}' if widths else ''
    print(f'step {step}/{self.total_steps}  loss {loss:.4f}{summed}  '
          f'temp {metrics["temperature"]:.4f}  acc i2t {metrics["acc_i2t"]:.3f} '
          f't2i {metrics["acc_t2i"]:.3f}  {examples_per_s:.1f} ex/s  ETA {eta}{bad}', flush=True)

  def close(self) -> None:
    """Flushes and closes the files."""
    if self._tb is not None:
      self._tb.close()
    if self._tb_upload is not None:
      self._tb_upload.upload()
      self._tb_upload.close()
    if self._jsonl:
      self._jsonl.close()


class AppendFile:
  """A text file written at its end: a local file handle, or a buffer added to a bucket object."""

  def __init__(self, path: str):
    self.path, self._bucket = path, storage.is_bucket(path)
    self._local = None if self._bucket else open(path, 'a')
    self._pending: list[str] = []
    self._flushed_at = time.monotonic()

  def write(self, text: str) -> None:
    """Adds text (durable at the next flush)."""
    if self._local is not None:
      self._local.write(text)
    else:
      self._pending.append(text)

  def flush(self, force: bool = True) -> bool:
    """Writes out what is buffered: locally always, in a bucket when `force` or the interval
    has passed; returns whether it flushed."""
    if self._local is not None:
      self._local.flush()
      return True
    if not force and time.monotonic() - self._flushed_at < BUCKET_FLUSH_SECONDS:
      return False
    if self._pending:
      storage.append_bytes(self.path, ''.join(self._pending).encode())
      self._pending = []  # kept on failure: the next flush retries them
    self._flushed_at = time.monotonic()
    return True

  def close(self) -> None:
    """Flushes and closes."""
    self.flush()
    if self._local is not None:
      self._local.close()


class EventUploader:
  """TensorBoard event files written in a local temporary folder, their new bytes appended to
  objects of the same names in the bucket folder at each upload (TFRecords concatenate)."""

  def __init__(self, bucket_dir: str):
    self.bucket_dir = bucket_dir
    self.local_dir = tempfile.mkdtemp(prefix='tb_')
    self._sent: dict[str, int] = {}

  def upload(self) -> None:
    """Appends what each local event file gained since the last upload."""
    for name in sorted(os.listdir(self.local_dir)):
      with open(os.path.join(self.local_dir, name), 'rb') as f:
        f.seek(self._sent.get(name, 0))
        new = f.read()
      if new:
        storage.append_bytes(storage.join(self.bucket_dir, name), new)
        self._sent[name] = self._sent.get(name, 0) + len(new)

  def close(self) -> None:
    """Removes the local copies."""
    shutil.rmtree(self.local_dir, ignore_errors=True)


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

"""OpenCLIP's own train step on synthetic batches: the peer side of `benchmarks.vs_openclip`.

  PEER_PYTHON -m benchmarks.openclip_step --model_json JSON --batch N --steps N --precision P --out F

Runs in the optional peers environment (`benchmarks/requirements-peers.txt`: torch, open_clip_torch),
never in the project's. It builds the architecture `benchmarks.vs_openclip` derives from our config
(`open_clip.CLIP(**model_json)`: CLS pooling, exact GELU, causal text with end-of-text pooling;
OpenCLIP adds ln_pre/ln_post on the image side), OpenCLIP's `ClipLoss`, AdamW with OpenCLIP's parameter groups and cosine schedule, and
drives `open_clip_train.train.train_one_epoch` — OpenCLIP's real training loop — over an in-memory
loader of random batches. A step's time is the gap between two consecutive batch requests of that
loop, so it covers forward, loss, backward, optimizer step and the logit-scale clamp.
Imports no jax and nothing of this project.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time
from types import SimpleNamespace

class TimedLoader:
  """An in-memory loader of random batches that records when OpenCLIP's loop asks for each one."""

  def __init__(self, torch, cfg: dict, batch: int, steps: int):
    vision, text = cfg['vision_cfg'], cfg['text_cfg']
    gen = torch.Generator().manual_seed(0)
    size, ctx = vision['image_size'], text['context_length']
    self.images = torch.randn(batch, 3, size, size, generator=gen)
    tokens = torch.randint(3, text['vocab_size'] - 1, (batch, ctx), generator=gen)
    lengths = torch.randint(2, ctx + 1, (batch,), generator=gen)
    tokens[torch.arange(ctx)[None, :] >= lengths[:, None]] = 0
    tokens[torch.arange(batch), lengths - 1] = text['vocab_size'] - 1  # end-of-text: the argmax id
    self.texts = tokens
    self.num_batches, self.num_samples = steps, steps * batch
    self.times: list[float] = []
    self.kernel_times: list[float] = []  # the process's system CPU time at each request

  def _mark(self) -> None:
    self.times.append(time.perf_counter())
    self.kernel_times.append(resource.getrusage(resource.RUSAGE_SELF).ru_stime)

  def __iter__(self):
    for _ in range(self.num_batches):
      self._mark()
      yield self.images, self.texts
    self._mark()


def _median_timed_step(marks: list[float]) -> float:
  """Median gap between consecutive batch requests, the warm-up step's (the first gap) left out."""
  return statistics.median(b - a for a, b in zip(marks[1:], marks[2:]))


def run(cfg: dict, batch: int, steps: int, precision: str, threads: int) -> dict:
  """Times OpenCLIP's training loop for `steps` steps; the first (warm-up) step is excluded."""
  import torch
  import open_clip
  from open_clip_train.scheduler import cosine_lr
  from open_clip_train.train import train_one_epoch

  torch.set_num_threads(threads)
  torch.manual_seed(0)
  model = open_clip.CLIP(**cfg, output_dict=True)
  # OpenCLIP's main.py: no weight decay on gains, biases, embeddings and the logit scale.
  exclude = lambda n, p: p.ndim < 2 or 'bn' in n or 'ln' in n or 'bias' in n or 'logit_scale' in n
  named = list(model.named_parameters())
  groups = [{'params': [p for n, p in named if exclude(n, p)], 'weight_decay': 0.0},
            {'params': [p for n, p in named if not exclude(n, p)], 'weight_decay': 0.2}]
  optimizer = torch.optim.AdamW(groups, lr=5e-4, betas=(0.9, 0.98), eps=1e-6)
  scheduler = cosine_lr(optimizer, 5e-4, 0, 10_000)
  loader = TimedLoader(torch, cfg, batch, steps + 1)
  data = {'train': SimpleNamespace(dataloader=loader, set_epoch=lambda epoch: None)}
  args = SimpleNamespace(device='cpu', precision=precision, distill=False, accum_freq=1,
                         skip_scheduler=False, horovod=False, grad_clip_norm=None, rank=0,
                         local_rank=0, world_size=1, log_every_n_steps=10 ** 9, batch_size=batch,
                         wandb=False)
  train_one_epoch(model, data, open_clip.ClipLoss(), 0, optimizer, None, scheduler, None, args)
  seconds, kernel = (_median_timed_step(marks) for marks in (loader.times, loader.kernel_times))
  return {'impl': f'OpenCLIP {open_clip.__version__} (torch {torch.__version__})',
          'precision': precision, 'batch': batch, 'step_s': round(seconds, 4),
          'examples_per_s': round(batch / seconds, 2), 'threads': torch.get_num_threads(),
          'kernel_s_per_step': round(kernel, 3),
          'peak_rss_gb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2),
          'glibc_tunables': os.environ.get('GLIBC_TUNABLES') or 'none'}


def main(argv: list[str]) -> int:
  """Command-line entry point."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model_json', required=True, help="OpenCLIP model config (a JSON dict)")
  parser.add_argument('--batch', type=int, required=True)
  parser.add_argument('--steps', type=int, default=5, help='timed steps after one warm-up step')
  parser.add_argument('--precision', choices=('fp32', 'amp_bf16'), default='fp32')
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--out', required=True)
  args = parser.parse_args(argv)
  row = run(json.loads(args.model_json), args.batch, args.steps, args.precision, args.threads)
  with open(args.out, 'w') as f:
    json.dump(row, f)
  print(json.dumps(row))
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))

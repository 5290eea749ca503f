"""Embedding a dataset on a mesh: each example read by one process and counted exactly once.

Rows are cut into global batches padded up to a multiple of the batch parallelism; padded rows
repeat index 0 and are dropped by a mask after the (replicated) embeddings come back. Each process
reads the rows its own devices hold, wherever the mesh puts them: on TPU device orders a process's
devices need not be neighbours in the mesh, so its rows need not be one contiguous block.
"""

import math
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from data.transforms import eval_transform
from eval.progress import Progress
from pretrain.parallel import sharding
from pretrain.step.state import merge_model

ReadRows = Callable[[np.ndarray], np.ndarray]  # record indices -> model inputs for those rows


def process_rows(batch_sharding: jax.sharding.Sharding, rows: int) -> np.ndarray:
  """Positions in a global batch of `rows` that this process's devices hold, ascending: the
  order jax.make_array_from_process_local_data reads a process's rows in."""
  blocks = {(index[0].start or 0, rows if index[0].stop is None else index[0].stop)
            for index in batch_sharding.addressable_devices_indices_map((rows,)).values()}
  return np.concatenate([np.arange(a, b) for a, b in sorted(blocks)])


class Embedder:
  """Jitted image and text encoders of a model, batch-sharded in, replicated out."""

  def __init__(self, graphdef: nnx.GraphDef, params: Any, mesh: Mesh, batch_stats: Any = None,
               progress: bool = True):
    # batch_stats: BatchNorm running averages; {} for models without BatchNorm.
    self.params, self.batch_stats, self.mesh = params, batch_stats or {}, mesh
    # Embedding progress on stderr (process 0; eval.progress); the trainer's evals print one
    # summary line per task instead.
    self.progress = progress
    in_shardings = (None, None, sharding.batch_sharding(mesh))
    out = sharding.replicated(mesh)

    def images(p, s, x):
      return merge_model(graphdef, p, s).embed_images(x)

    def texts(p, s, x):
      return merge_model(graphdef, p, s).embed_texts(x)

    self._images = jax.jit(images, in_shardings=in_shardings, out_shardings=out)
    self._texts = jax.jit(texts, in_shardings=in_shardings, out_shardings=out)

  def global_batch(self, batch_size: int) -> int:
    """`batch_size` rounded up so it splits evenly over devices and processes."""
    ways = math.lcm(sharding.batch_parallelism(self.mesh), jax.process_count())
    return max(ways, -(-batch_size // ways) * ways)

  def embed(self, kind: str, read_rows: ReadRows, count: int, batch_size: int) -> np.ndarray:
    """[count, D] embeddings of rows 0..count-1 (`kind` is 'images' or 'texts')."""
    fn = self._images if kind == 'images' else self._texts
    step = self.global_batch(batch_size)
    batch_sharding = sharding.batch_sharding(self.mesh)
    mine = process_rows(batch_sharding, step)
    out = []
    progress = Progress(count, kind, enabled=self.progress and jax.process_index() == 0)
    for start in range(0, count, step):
      index = np.arange(start, start + step)
      valid = index < count
      rows = read_rows(np.where(valid, index, 0)[mine])
      batch = jax.make_array_from_process_local_data(batch_sharding, rows, (step, *rows.shape[1:]))
      out.append(np.asarray(fn(self.params, self.batch_stats, batch))[valid])
      progress.update(int(valid.sum()))
    progress.close()
    if not out:
      return np.zeros((0, 0), np.float32)
    return np.concatenate(out)

  def embed_images(self, source, image_size: int, batch_size: int,
                   count: int | None = None) -> np.ndarray:
    """Embeddings of the first `count` images of a source (default all), each read and
    eval-transformed by one process."""
    def read_images(index: np.ndarray) -> np.ndarray:
      return np.stack([eval_transform(source[int(i)]['image'], image_size) for i in index])
    return self.embed('images', read_images, len(source) if count is None else count, batch_size)

  def embed_texts(self, tokens: np.ndarray, batch_size: int) -> np.ndarray:
    """Embeddings of already tokenised texts (every process holds all of them)."""
    return self.embed('texts', lambda idx: tokens[idx], len(tokens), batch_size)

"""Embedding a dataset on a mesh: each example read by one process and counted exactly once.

Rows are cut into global batches padded up to a multiple of the batch parallelism; padded rows
repeat index 0 and are dropped by a mask after the (replicated) embeddings come back.
"""

import math
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from data.transforms import eval_transform
from pretrain.parallel import sharding

ReadRows = Callable[[np.ndarray], np.ndarray]  # record indices -> model inputs for those rows


class Embedder:
  """Jitted image and text encoders of a model, batch-sharded in, replicated out."""

  def __init__(self, graphdef: nnx.GraphDef, params: Any, mesh: Mesh):
    self.params, self.mesh = params, mesh
    in_shardings = (None, sharding.batch_sharding(mesh))
    out = sharding.replicated(mesh)

    def images(p, x):
      return nnx.merge(graphdef, p).embed_images(x)

    def texts(p, x):
      return nnx.merge(graphdef, p).embed_texts(x)

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
    local = step // jax.process_count()
    first = jax.process_index() * local
    out = []
    for start in range(0, count, step):
      index = np.arange(start, start + step)
      valid = index < count
      rows = read_rows(np.where(valid, index, 0)[first:first + local])
      batch = jax.make_array_from_process_local_data(sharding.batch_sharding(self.mesh), rows)
      out.append(np.asarray(fn(self.params, batch))[valid])
    if not out:
      return np.zeros((0, 0), np.float32)
    return np.concatenate(out)

  def embed_images(self, source, image_size: int, batch_size: int) -> np.ndarray:
    """Embeddings of every image of a source, each read and eval-transformed by one process."""
    def read_images(index: np.ndarray) -> np.ndarray:
      return np.stack([eval_transform(source[int(i)]['image'], image_size) for i in index])
    return self.embed('images', read_images, len(source), batch_size)

  def embed_texts(self, tokens: np.ndarray, batch_size: int) -> np.ndarray:
    """Embeddings of already tokenised texts (every process holds all of them)."""
    return self.embed('texts', lambda idx: tokens[idx], len(tokens), batch_size)

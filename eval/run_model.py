"""A training run as eval jobs see it: config, tokenizer and parameters, from `--workdir` alone."""

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from data import storage
from data.tokenizer import load_from_workdir
from pretrain.runtime import startup
from pretrain.runtime.checkpoint import check_checkpoint_location, restore_model
from eval.embed import Embedder
from pretrain.parallel import sharding
from pretrain.config.cli import load_saved_config
from pretrain.step.train_step import model_graphdef_and_variables


class RunModel:
  """Rebuilds the model and tokenizer a run saved (on local disk or gs://); restores parameters
  onto this job's devices."""

  def __init__(self, workdir: str):
    check_checkpoint_location(workdir, '--workdir')
    self.workdir = workdir
    self.config = load_saved_config(storage.join(workdir, 'config.json'))
    self.tokenizer = load_from_workdir(self.config.data.tokenizer, workdir,
                                       self.config.data.lowercase)
    self.graphdef, params, stats = model_graphdef_and_variables(self.config)
    # Whatever devices this job has: batch over all of them, parameters replicated.
    self.mesh = sharding.make_mesh({'data': -1, 'fsdp': 1})
    replicated = NamedSharding(self.mesh, P())
    self.abstract_params, self.abstract_stats = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), (params, stats))
    self._described = False  # the devices line is printed with the first checkpoint only

  def embedder(self, step: int | None) -> tuple[int, Embedder]:
    """(step, an Embedder over that checkpoint's parameters); None = the newest."""
    step, params, stats = restore_model(self.workdir, step, self.abstract_params,
                                        self.abstract_stats)
    devices = None if self._described else startup.Devices.of(self.mesh)
    startup.print_block(startup.describe_eval(workdir=self.workdir, step=step, devices=devices))
    self._described = True
    return step, Embedder(self.graphdef, params, self.mesh, stats)

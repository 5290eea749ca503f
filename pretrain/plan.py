"""Plans a pod run without the pod: compiles the train step ahead of time for a simulated mesh.

  python -m pretrain.plan --config PATH[:ARG] --mesh data=N,fsdp=M [--config.FIELD=VALUE ...]

Lowers and compiles the real train step (the config's model, loss, optimizer, remat, scan,
accum_steps, dtype and FSDP placement) for N x M simulated CPU devices, on abstract arrays (nothing
is allocated), and prints per device: parameter and optimizer-state bytes (from their shardings),
XLA's argument / temporary / output sizes (its memory analysis), model FLOPs per step (its cost
analysis of the same model unrolled: see `model_flops_config`), and the global and per-device
batch. The step is the one the pod would run: built for an accelerator platform (stock ops, whole
batches; pretrain.backends.resolve_for_platform), compiled here. XLA:CPU's fusion and scheduling
differ from TPU/GPU, so treat the bytes as an estimate to within tens of percent, and compare
variants with each other.
"""

import math
import os
import sys

from pretrain.config.cli import parse_args
from data.errors import ConfigError

GIB = 2 ** 30


def parse_mesh(text: str) -> dict[str, int]:
  """'data=32,fsdp=8' -> {'data': 32, 'fsdp': 8}, with one-line errors."""
  sizes = {}
  for part in text.split(','):
    name, eq, value = part.strip().partition('=')
    if not eq or not value.strip().isdigit() or int(value) < 1:
      raise ConfigError(f'--mesh {text!r}: write positive sizes as data=N,fsdp=M')
    sizes[name.strip()] = int(value)
  unknown = set(sizes) - {'data', 'fsdp'}
  if unknown:
    raise ConfigError(f'--mesh {text!r}: unknown axes {sorted(unknown)}; the axes are data, fsdp')
  return {'data': sizes.get('data', 1), 'fsdp': sizes.get('fsdp', 1)}


def per_device_bytes(abstract_tree, shardings) -> int:
  """Bytes one device holds of a sharded pytree (the largest shard of every leaf)."""
  import jax
  total = 0
  for leaf, sharding in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings)):
    total += math.prod(sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
  return total


def compile_step(config, mesh, platform: str = 'tpu'):
  """(StepBuilder, the train step compiled ahead of time on abstract state and batch).

  The step is built for `platform`, the pod's (backend choices resolved for it: stock ops, whole
  batches; pretrain.backends.resolve_for_platform), and compiled on this process's devices.
  """
  import jax

  from data.records import BAD_KINDS
  from pretrain.parallel import sharding
  from pretrain.step.optim import make_optimizer
  from pretrain.step.train_step import StepBuilder

  tx, schedule = make_optimizer(config.optim, config.total_steps)
  builder = StepBuilder(config, mesh, tx, schedule, platform=platform)
  rows = sharding.batch_sharding(mesh)
  n, size, ctx = config.batch_size, config.model.image_size, config.model.context_length
  batch = {'image': jax.ShapeDtypeStruct((n, size, size, 3), 'uint8', sharding=rows),
           'text': jax.ShapeDtypeStruct((n, ctx), 'int32', sharding=rows),
           'bad': jax.ShapeDtypeStruct((n, len(BAD_KINDS)), 'int32', sharding=rows)}
  return builder, builder.jit_step().lower(builder.abstract_state, batch).compile()


def model_flops_config(config):
  """The same model unrolled, without remat or gradient caching, with the local-rows softmax.

  XLA's cost analysis counts a loop body once, so scanned layers, gradient caching and the loss
  rings hide FLOPs; this variant has no loops in the towers and counts what MFU counts (model
  FLOPs, no recomputation). A sigmoid loss keeps its ring (its FLOPs are small next to the towers').
  """
  flat = config.copy_and_resolve_references()
  with flat.unlocked():
    flat.model.update(dict(scan_layers=False, image_remat='none', text_remat='none'))
    flat.accum_steps = 1
    if flat.loss.name == 'softmax':
      flat.loss.impl = 'local_rows'
  return flat


def step_flops(compiled) -> float:
  """FLOPs of one device's compiled step (XLA's cost analysis)."""
  cost = compiled.cost_analysis()
  return float((cost[0] if isinstance(cost, list) else cost)['flops'])


def plan(config, sizes: dict[str, int]) -> dict:
  """Compiles the train step for `sizes` on this process's (simulated) devices; returns figures."""
  import jax

  from pretrain.parallel import sharding
  from pretrain.config import validate

  with config.unlocked():
    config.mesh.update(sizes)
  validate.check_training(config, jax.device_count(), 1)
  mesh = sharding.make_mesh(sizes)
  builder, compiled = compile_step(config, mesh)
  memory = compiled.memory_analysis()
  flat = model_flops_config(config)
  flops = step_flops(compiled if flat.to_dict() == config.to_dict() else compile_step(flat, mesh)[1])
  n = config.batch_size
  shardings = builder.state_shardings
  abstract = builder.abstract_state
  return {
      'devices': jax.device_count(), 'mesh': dict(mesh.shape), 'global_batch': n,
      'per_device_batch': n // sharding.batch_parallelism(mesh),
      'micro_batch_per_device': n // sharding.batch_parallelism(mesh) // config.accum_steps,
      'params': sum(math.prod(x.shape) for x in jax.tree.leaves(abstract['params'])),
      'param_bytes': per_device_bytes(abstract['params'], shardings['params']),
      'opt_state_bytes': per_device_bytes(abstract['opt_state'], shardings['opt_state']),
      'argument_bytes': memory.argument_size_in_bytes,
      'temp_bytes': memory.temp_size_in_bytes,
      'output_bytes': memory.output_size_in_bytes,
      'aliased_bytes': memory.alias_size_in_bytes,
      'flops_per_device': flops,
  }


def report(figures: dict, config) -> str:
  """The plan as a few readable lines."""
  gib = lambda b: f'{b / GIB:8.3f} GiB'
  peak = (figures['argument_bytes'] + figures['temp_bytes'] + figures['output_bytes']
          - figures['aliased_bytes'])
  lines = [
      f'mesh {figures["mesh"]} ({figures["devices"]} devices), model {config.model.variant} '
      f'{config.model.dtype}, loss {config.loss.name}/{config.loss.impl}, '
      f'remat image={config.model.image_remat} text={config.model.text_remat}, '
      f'scan_layers={config.model.scan_layers}, param_sharding={config.param_sharding}',
      f'global batch {figures["global_batch"]}: {figures["per_device_batch"]} per device, '
      f'accum_steps {config.accum_steps} -> towers run on {figures["micro_batch_per_device"]} '
      'per device at a time',
      f'parameters            {figures["params"]:,}',
      'per device:',
      f'  parameters          {gib(figures["param_bytes"])}',
      f'  optimizer state     {gib(figures["opt_state_bytes"])}',
      f'  step arguments      {gib(figures["argument_bytes"])}  (state + batch, XLA)',
      f'  peak temporaries    {gib(figures["temp_bytes"])}  (activations, gradients, loss; XLA)',
      f'  outputs not aliased {gib(figures["output_bytes"] - figures["aliased_bytes"])}',
      f'  estimated peak      {gib(peak)}',
      f'  model FLOPs/step    {figures["flops_per_device"] / 1e12:8.3f} TFLOP '
      f'(all devices: {figures["flops_per_device"] * figures["devices"] / 1e15:.3f} PFLOP; '
      'unrolled, without remat or gradient-caching recompute)',
  ]
  return '\n'.join(lines)


def main(argv: list[str]) -> int:
  """Command-line entry point; bad flags or configs print one line and exit 2."""
  try:
    config, flags = parse_args(argv, required=('config', 'mesh'))
    sizes = parse_mesh(flags['mesh'])
    import jax
    jax.config.update('jax_platforms', 'cpu')
    jax.config.update('jax_num_cpu_devices', math.prod(sizes.values()))
    figures = plan(config, sizes)
  except ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(report(figures, config), flush=True)
  return 0


if __name__ == '__main__':
  os.environ.pop('XLA_FLAGS', None)  # the device count comes from --mesh
  sys.exit(main(sys.argv[1:]))

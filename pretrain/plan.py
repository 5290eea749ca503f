"""Plans a pod run without the pod: compiles the train step ahead of time for a simulated mesh.

  python -m pretrain.plan --config PATH[:ARG] --mesh data=N,fsdp=M [--config.FIELD=VALUE ...]
  python -m pretrain.plan ... --lower_for cuda,tpu    # does the step build for these platforms?

Lowers and compiles the real train step (the config's model, loss, optimizer, remat, scan,
accum_steps, dtype and FSDP placement) for N x M simulated CPU devices, on abstract arrays (nothing
is allocated), and prints per device: parameter and optimizer-state bytes (from their shardings),
XLA's argument / temporary / output sizes (its memory analysis), model FLOPs per step (its cost
analysis of the same model unrolled: see `model_flops_config`), and the global and per-device
batch. XLA:CPU's fusion and scheduling differ from TPU/GPU, so treat the bytes as an estimate to
within tens of percent, and compare variants with each other.

With `--lower_for`, the step is instead lowered for each named platform (cpu, cuda, tpu) with the
op set and mechanisms that platform gets (pretrain/backends), without its hardware, and checked
(pretrain/step/lowering.py): one line per platform, exit status 1 when one does not lower or fails
a check.
"""

import math
import os
import sys

from data.errors import ConfigError
from pretrain.config.cli import parse_args
from pretrain.parallel.sharding import MESH_AXES

GIB = 2 ** 30


def parse_mesh(text: str) -> dict[str, int]:
  """'data=32,fsdp=8' -> {'data': 32, 'fsdp': 8}, with one-line errors."""
  sizes = {}
  for part in text.split(','):
    name, eq, value = part.strip().partition('=')
    if not eq or not value.strip().isdigit() or int(value) < 1:
      raise ConfigError(f'--mesh {text!r}: write positive sizes as data=N,fsdp=M')
    sizes[name.strip()] = int(value)
  unknown = set(sizes) - set(MESH_AXES)
  if unknown:
    raise ConfigError(f'--mesh {text!r}: unknown axes {sorted(unknown)}; the axes are '
                      + ', '.join(MESH_AXES))
  return {axis: sizes.get(axis, 1) for axis in MESH_AXES}


def per_device_bytes(abstract_tree, shardings) -> int:
  """Bytes one device holds of a sharded pytree (the largest shard of every leaf)."""
  import jax
  total = 0
  for leaf, sharding in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings)):
    total += math.prod(sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
  return total


def compile_step(config, mesh, platform: str = 'tpu'):
  """(StepBuilder, the train step compiled ahead of time on abstract state and batch).

  The step is built as `platform` runs it (op set, no CPU-only mechanisms: a pod's accelerators),
  and compiled by XLA:CPU, the compiler this host has. A fused attention kernel (splash, cuDNN)
  does not compile here: the step is compiled with XLA's attention, whose [B, heads, T, T] scores
  make the temporaries an upper bound for such a platform.
  """
  from pretrain.backends import resolve_for_platform
  from pretrain.step.lowering import abstract_batch, step_builder

  config = resolve_for_platform(config, platform)
  if config.model.attention in ('splash', 'cudnn'):
    with config.unlocked():
      config.model.attention = 'xla'
  builder = step_builder(config, mesh, platform)
  batch = abstract_batch(config, mesh)
  return builder, builder.jit_step().trace(builder.abstract_state, batch).lower(
      lowering_platforms=('cpu',)).compile()


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


def planned_mesh(config, sizes: dict[str, int]):
  """`config` set to the mesh `sizes` and validated for it; the mesh over this process's
  (simulated) devices."""
  import jax

  from pretrain.config import validate
  from pretrain.parallel import sharding

  with config.unlocked():
    config.mesh.update(sizes)
  validate.check_training(config, jax.device_count(), 1)
  return sharding.make_mesh(sizes)


def plan(config, sizes: dict[str, int]) -> dict:
  """Compiles the train step for `sizes` on this process's (simulated) devices; returns figures."""
  import jax

  from pretrain.parallel import sharding

  mesh = planned_mesh(config, sizes)
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
      'params': sum(math.prod(x.shape) for x in jax.tree.leaves(abstract.params)),
      'param_bytes': per_device_bytes(abstract.params, shardings.params),
      'opt_state_bytes': per_device_bytes(abstract.opt_state, shardings.opt_state),
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


def parse_platforms(text: str) -> tuple[str, ...]:
  """'cuda,tpu' -> ('cuda', 'tpu'), with one-line errors."""
  from pretrain.step.lowering import PLATFORMS
  names = tuple(name.strip() for name in text.split(',') if name.strip())
  unknown = [name for name in names if name not in PLATFORMS]
  if not names or unknown:
    raise ConfigError(f'--lower_for {text!r}: name platforms among {", ".join(PLATFORMS)}')
  return names


def lower_for(config, sizes: dict[str, int], platforms: tuple[str, ...]) -> int:
  """Prints one line per platform; 0 when every platform lowers and passes the checks."""
  from pretrain.step.lowering import lower_step

  mesh = planned_mesh(config, sizes)
  status = 0
  for platform in platforms:
    try:
      (lowered,) = lower_step(config, mesh, (platform,))
    except Exception as e:  # A CPU-only setting, or a lowering rule that refused: one line each.
      reason = (str(e).strip().splitlines() or [''])[0]
      print(f'lowered for {platform}: failed ({type(e).__name__}: {reason})', flush=True)
      status = 1
      continue
    problems = lowered.problems()
    if problems:
      print(f'lowered for {platform}: failed ({"; ".join(problems)})', flush=True)
      status = 1
    else:
      print(f'lowered for {platform}: ok ({lowered.ops} ops, attention: {lowered.attention})',
            flush=True)
  return status


def main(argv: list[str]) -> int:
  """Command-line entry point; bad flags or configs print one line and exit 2."""
  try:
    config, flags = parse_args(argv, required=('config', 'mesh'), optional=('lower_for',),
                               usage=__doc__)
    sizes = parse_mesh(flags['mesh'])
    platforms = parse_platforms(flags['lower_for']) if 'lower_for' in flags else ()
    import jax
    jax.config.update('jax_platforms', 'cpu')
    jax.config.update('jax_num_cpu_devices', math.prod(sizes.values()))
    if platforms:
      return lower_for(config, sizes, platforms)
    figures = plan(config, sizes)
  except ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(report(figures, config), flush=True)
  return 0


if __name__ == '__main__':
  os.environ.pop('XLA_FLAGS', None)  # the device count comes from --mesh
  sys.exit(main(sys.argv[1:]))

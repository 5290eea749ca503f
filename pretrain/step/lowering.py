"""The real train step lowered for a platform (cpu, cuda, tpu) without its hardware.

`jax.jit(step).trace(...).lower(lowering_platforms=(platform,))` turns the step into the StableHLO
module that platform's compiler would receive, on abstract state and batch, on whatever devices this
host has: what does not lower for a platform (an op with no lowering rule there, a dtype clash
inside a scan) fails here, not on the pod. The checks below are what a module must satisfy to run
well there: the old state donated to the new one, and nothing that needs the host or a CPU kernel.
"""

import dataclasses
import re

import jax
from jax._src.lib.mlir import ir
from jax.sharding import Mesh

from data.records import BAD_KINDS
from pretrain import backends
from pretrain.parallel import sharding
from pretrain.step.optim import make_optimizer
from pretrain.step.train_step import StepBuilder

PLATFORMS = ('cpu', 'cuda', 'tpu')
# Where `model.attention` resolves to cuDNN, the cuda module is lowered with XLA's attention: jax
# refuses to trace cuDNN attention without a local GPU ("cuDNN is not detected").
CUDNN_ELSEWHERE = 'xla here, cudnn on a GPU'
# The custom call a Pallas TPU kernel (splash attention) lowers to.
PALLAS_TPU_TARGET = 'tpu_custom_call'
# custom_call targets that sharding and SPMD partitioning insert on every platform.
PARTITIONING_TARGETS = ('Sharding', 'SPMDFullToShardShape', 'SPMDShardToFullShape',
                        'annotate_device_placement')
_CUSTOM_CALL = re.compile(r'custom_call\s*@([\w$.-]+)|call_target_name\s*=\s*"([^"]+)"')
_STRUCTURE_OPS = ('builtin.module', 'func.func', 'func.return')


@dataclasses.dataclass(frozen=True)
class LoweredStep:
  """What a platform's module of the train step holds."""
  platform: str
  ops: int                         # Operations in the StableHLO module (functions and returns aside).
  attention: str                   # The attention implementation the step runs.
  state_leaves: int                # Arrays in the train state.
  donated_state_leaves: int        # Of those, arguments aliased to an output (donated in place).
  custom_calls: tuple[str, ...]    # Distinct custom_call targets in the module.

  def problems(self) -> list[str]:
    """Why this module would not run as intended on its platform (empty when it would)."""
    found = []
    if self.donated_state_leaves != self.state_leaves:
      found.append(f'{self.donated_state_leaves} of {self.state_leaves} state arrays donated')
    host = [t for t in self.custom_calls if 'callback' in t.lower()]
    if host:
      found.append(f'host callbacks {host}')
    if self.attention == 'splash' and PALLAS_TPU_TARGET not in self.custom_calls:
      found.append(f'attention splash but no {PALLAS_TPU_TARGET} in the module')
    if self.platform != 'cpu':
      foreign = [t for t in self.custom_calls if t not in PARTITIONING_TARGETS and t not in host
                 and not _runs_on(t, self.platform)]
      if foreign:
        found.append(f'custom calls {foreign} that {self.platform} does not run')
    return found


def _runs_on(target: str, platform: str) -> bool:
  """Whether a custom_call target is one the platform's compiler implements."""
  prefixes = {'cuda': ('__cudnn$', '__cublas$', 'cu', '__gpu$'), 'tpu': ('tpu_custom_call',)}
  return target.startswith(prefixes.get(platform, ()))


def abstract_batch(config, mesh: Mesh) -> dict:
  """Shape-only global batch of `config`, laid out as the loop feeds it."""
  rows = sharding.batch_sharding(mesh)
  n, size, ctx = config.batch_size, config.model.image_size, config.model.context_length
  return {'image': jax.ShapeDtypeStruct((n, size, size, 3), 'uint8', sharding=rows),
          'text': jax.ShapeDtypeStruct((n, ctx), 'int32', sharding=rows),
          'bad': jax.ShapeDtypeStruct((n, len(BAD_KINDS)), 'int32', sharding=rows)}


def step_builder(config, mesh: Mesh, platform: str) -> StepBuilder:
  """The StepBuilder the loop would make for `config` on `platform`."""
  tx, schedule = make_optimizer(config.optim, config.total_steps)
  return StepBuilder(config, mesh, tx, schedule, platform=platform)


def _count_ops(module: ir.Module) -> int:
  count = [0]

  def visit(op):
    if op.name not in _STRUCTURE_OPS:
      count[0] += 1
    return ir.WalkResult.ADVANCE

  module.operation.walk(visit)
  return count[0]


def _donated_arguments(text: str) -> int:
  """Arguments of the module's main function that alias an output or are marked donors."""
  main = re.search(r'func\.func public @main\((.*?)\)\s*->', text, re.S)
  arguments = main.group(1) if main else ''
  return len(re.findall(r'tf\.aliasing_output|jax\.buffer_donor', arguments))


def lowerable(config, platform: str) -> tuple[object, str]:
  """(`config` as this host can lower it for `platform`, the attention line to print).

  cuDNN attention cannot be traced without a GPU here: the step is lowered with XLA's attention
  instead (same function, same parameters) and the line says what a GPU would run.
  """
  resolved = backends.resolve_for_platform(config, platform)
  attention = resolved.model.attention
  if attention != 'cudnn' or _has_gpu():
    return resolved, attention
  with resolved.unlocked():
    resolved.model.attention = 'xla'
  return resolved, CUDNN_ELSEWHERE


def _has_gpu() -> bool:
  try:
    return bool(jax.devices('gpu'))
  except RuntimeError:
    return False


def lower_step(config, mesh: Mesh, platforms=PLATFORMS) -> list[LoweredStep]:
  """Lowers the step for each platform; platforms that get the same step share one trace."""
  traces, results = {}, []
  for platform in platforms:
    resolved, attention = lowerable(config, platform)
    if resolved.to_json() not in traces:
      builder = step_builder(resolved, mesh, platform)
      traced = builder.jit_step().trace(builder.abstract_state, abstract_batch(config, mesh))
      traces[resolved.to_json()] = builder, traced
    builder, traced = traces[resolved.to_json()]
    lowered = traced.lower(lowering_platforms=(platform,))
    text = lowered.as_text()
    results.append(LoweredStep(
        platform=platform, ops=_count_ops(lowered.compiler_ir('stablehlo')),
        attention=attention,
        state_leaves=len(jax.tree.leaves(builder.abstract_state)),
        donated_state_leaves=_donated_arguments(text),
        custom_calls=tuple(sorted({a or b for a, b in _CUSTOM_CALL.findall(text)}))))
  return results

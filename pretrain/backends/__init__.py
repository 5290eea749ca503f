"""Backend-specific code, selected in this one place from the platform a step runs on.

The XLA:CPU mechanisms (pretrain/backends/cpu/: hand-written-derivative ops, huge-page malloc,
step-memory prefaulting, tower slices) run only where the platform is the CPU. On a GPU or TPU the
model runs the stock ops (jax.nn / plain jax.lax, pretrain/models/ops.py), the towers take the
whole batch, nothing is prefaulted and no process re-executes itself.

This module imports no jax at load time: the re-exec decision (`will_run_on_accelerator`) is taken
before jax loads.
"""

import dataclasses
import importlib.util
import os
from collections.abc import Callable, Mapping

import ml_collections

from data.errors import ConfigError

CPU = 'cpu'
OPS = ('auto', 'stock', 'cpu')  # `model.ops`; 'auto': 'cpu' on the CPU platform, 'stock' elsewhere.
# `model.attention`: 'xla' (jax.nn.dot_product_attention's XLA path, any platform), 'cudnn'
# (cuDNN flash attention, NVIDIA GPUs, bf16/fp16), 'splash' (Pallas splash attention, TPU), 'cpu'
# (the CPU op set's hand-derivative attention, XLA:CPU); 'auto' picks (resolve_attention).
ATTENTION = ('auto', 'xla', 'cudnn', 'splash', 'cpu')
# Where cuDNN runs: jax's name for a CUDA backend, and the lowering name.
CUDNN_PLATFORMS = ('gpu', 'cuda')
HALF_DTYPES = ('bfloat16', 'float16')  # q, k, v dtypes cuDNN flash attention takes.
# `tower_batch_chunks = 0`: the CPU rule (backends/cpu/tower_slices.py) on the CPU, 1 elsewhere.
AUTO_CHUNKS = 0
# Accelerator plugins of jax (CUDA, ROCm) and the TPU runtime: installed where jax will use them.
ACCELERATOR_MODULES = ('jax_cuda12_plugin', 'jax_cuda13_plugin', 'jax_rocm60_plugin',
                       'jax_rocm7_plugin', 'libtpu')
# Device nodes of NVIDIA GPUs, AMD GPUs (ROCm's kernel driver) and TPUs (v2-v4 VMs).
ACCELERATOR_DEVICES = ('/dev/nvidia0', '/dev/kfd', '/dev/accel0')


def resolve_ops(setting: str, platform: str) -> str:
  """`model.ops` for `platform`: 'stock' or 'cpu'; a one-line ConfigError where it cannot apply."""
  if setting not in OPS:
    raise ConfigError(f'unknown model.ops {setting!r}; known: {", ".join(OPS)}')
  if setting == 'auto':
    return 'cpu' if platform == CPU else 'stock'
  if setting == 'cpu' and platform != CPU:
    raise ConfigError(f"model.ops 'cpu' is the XLA:CPU op set; platform {platform!r} runs "
                      "'stock' (or 'auto')")
  return setting


def resolve_attention(requested: str, platform: str, dtype: str, ops: str = 'cpu') -> str:
  """`model.attention` for `platform` and compute `dtype` under the resolved op set `ops`.

  'auto': cuDNN on a GPU when the compute dtype is bf16/fp16 (cuDNN takes no fp32), else XLA;
  splash on a TPU; on the CPU the op set's own attention ('cpu' under the CPU set, 'xla' under the
  stock one). An explicit choice the platform cannot run is a one-line ConfigError.
  """
  if requested not in ATTENTION:
    raise ConfigError(f'unknown model.attention {requested!r}; known: {", ".join(ATTENTION)}')
  if requested == 'auto':
    if platform in CUDNN_PLATFORMS:
      return 'cudnn' if dtype in HALF_DTYPES else 'xla'
    if platform == 'tpu':
      return 'splash'
    return 'cpu' if platform == CPU and ops == 'cpu' else 'xla'
  runs_on = {'cudnn': CUDNN_PLATFORMS, 'splash': ('tpu',), 'cpu': (CPU,)}.get(requested)
  if runs_on and platform not in runs_on:
    raise ConfigError(f'model.attention {requested!r} runs on {"/".join(runs_on)}, not on '
                      f"platform {platform!r}; use 'auto' or 'xla'")
  if requested == 'cudnn' and dtype not in HALF_DTYPES:
    raise ConfigError(f"model.attention 'cudnn' takes bf16/fp16 inputs; model.dtype is {dtype!r} "
                      "(set model.dtype=bfloat16, or attention 'auto' or 'xla')")
  return requested


def resolve_for_platform(config: ml_collections.ConfigDict,
                         platform: str) -> ml_collections.ConfigDict:
  """A copy of `config` with every backend choice made for `platform` ('cpu', 'gpu', 'cuda', 'tpu').

  model.ops: 'auto' -> 'cpu' on the CPU, 'stock' elsewhere. model.attention: resolve_attention.
  tower_batch_chunks: 0 (auto) stays 0
  on the CPU, where the number of slices depends on each call's batch and the parameters'
  shardings (backends/cpu/tower_slices.resolve_chunks), and is 1 elsewhere. prefault_step_memory:
  False off the CPU. A CPU-only choice made explicitly for an accelerator is a ConfigError.
  Idempotent: a resolved config resolves to itself for the same platform.
  """
  resolved = config.copy_and_resolve_references()
  with resolved.unlocked():
    resolved.model.ops = resolve_ops(config.model.get('ops', 'auto'), platform)
    resolved.model.attention = resolve_attention(config.model.get('attention', 'auto'), platform,
                                                 config.model.dtype, resolved.model.ops)
    if platform != CPU:
      chunks = config.tower_batch_chunks
      if chunks not in (AUTO_CHUNKS, 1):
        raise ConfigError(f'tower_batch_chunks {chunks}: tower slices are an XLA:CPU mechanism; '
                          f'platform {platform!r} runs the whole batch (0 or 1)')
      resolved.tower_batch_chunks = 1
      resolved.prefault_step_memory = False
  return resolved


def op_set(name: str, attention: str = 'auto', dtype: str = 'float32'):
  """The op set (pretrain/models/ops.OpSet) of a `model.ops` value with the `model.attention`
  implementation in it; 'auto' for this process's default backend (models built outside a train
  step: eval jobs, importers)."""
  if 'auto' in (name, attention):
    import jax
    platform = jax.default_backend()
    name = resolve_ops(name, platform)
    attention = resolve_attention(attention, platform, dtype, name)
  if name == 'cpu':
    from pretrain.backends.cpu.ops import CPU_OPS as ops
  elif name == 'stock':
    from pretrain.models.ops import STOCK_OPS as ops
  else:
    raise ConfigError(f'unknown model.ops {name!r}; known: {", ".join(OPS)}')
  return dataclasses.replace(ops, attention=attention_impl(attention),
                             attention_in_compute_dtype=attention != 'cpu')


def attention_impl(name: str):
  """The attention function (q, k, v, key_mask, causal) of a resolved `model.attention`."""
  if name == 'cpu':
    from pretrain.backends.cpu.ops import attention
  elif name == 'splash':
    from pretrain.backends.tpu.splash import attention
  elif name == 'cudnn':
    from pretrain.models.ops import cudnn_attention as attention
  elif name == 'xla':
    from pretrain.models.ops import attention
  else:
    raise ConfigError(f'unknown model.attention {name!r}; known: {", ".join(ATTENTION[1:])}')
  return attention


def will_run_on_accelerator(environ: Mapping[str, str] = os.environ,
                            find_spec: Callable = importlib.util.find_spec,
                            exists: Callable[[str], bool] = os.path.exists) -> bool:
  """Whether jax in this process will (probably) run on a GPU or TPU; decided without importing jax.

  JAX_PLATFORMS, where set, decides: any platform other than 'cpu' named in it means an
  accelerator. Otherwise an installed accelerator plugin (ACCELERATOR_MODULES) or an accelerator
  device node (ACCELERATOR_DEVICES) does. It errs towards 'accelerator': what depends on it (the
  huge-page malloc re-exec) is a CPU speed-up, never needed for correctness, and
  JAX_PLATFORMS=cpu gets it back on such a host.
  """
  platforms = [p.strip() for p in environ.get('JAX_PLATFORMS', '').split(',') if p.strip()]
  if platforms:
    return any(p != CPU for p in platforms)
  if any(_module_installed(name, find_spec) for name in ACCELERATOR_MODULES):
    return True
  return any(exists(path) for path in ACCELERATOR_DEVICES)


def _module_installed(name: str, find_spec: Callable) -> bool:
  try:
    return find_spec(name) is not None
  except (ImportError, ValueError):
    return False


# What XLA needs for run-to-run deterministic GPU programs (`config.deterministic`): no atomics in
# reductions and scatters (the scatter determinism expander comes with it), deterministic
# autotuning, and ops with no deterministic kernel refused at compile time instead of run.
DETERMINISTIC_GPU_FLAGS = ('--xla_gpu_deterministic_ops=true',
                           '--xla_gpu_exclude_nondeterministic_ops=true')
GPU_PLATFORMS = ('gpu', 'cuda', 'rocm')
GPU_MODULES = ('jax_cuda12_plugin', 'jax_cuda13_plugin', 'jax_rocm60_plugin', 'jax_rocm7_plugin')
GPU_DEVICES = ('/dev/nvidia0', '/dev/kfd')


def deterministic_xla_flags(platform: str, deterministic: bool) -> tuple[str, ...]:
  """The XLA flags `config.deterministic` asks of `platform`: GPU flags on a GPU, else none (XLA:CPU
  and TPU programs are already run-to-run deterministic)."""
  return DETERMINISTIC_GPU_FLAGS if deterministic and platform in GPU_PLATFORMS else ()


def with_xla_flags(xla_flags: str, flags: tuple[str, ...]) -> str:
  """`xla_flags` (an XLA_FLAGS value) plus each of `flags` whose name it does not set already."""
  names = {flag.split('=')[0] for flag in xla_flags.split()}
  return ' '.join([*xla_flags.split(), *(f for f in flags if f.split('=')[0] not in names)])


def will_run_on_gpu(environ: Mapping[str, str] = os.environ,
                    find_spec: Callable = importlib.util.find_spec,
                    exists: Callable[[str], bool] = os.path.exists) -> bool:
  """Whether jax in this process will (probably) run on a GPU (decided without starting jax)."""
  platforms = [p.strip() for p in environ.get('JAX_PLATFORMS', '').split(',') if p.strip()]
  if platforms:
    return platforms[0] in GPU_PLATFORMS
  if any(_module_installed(name, find_spec) for name in GPU_MODULES):
    return True
  return any(exists(path) for path in GPU_DEVICES)


def set_xla_flags(config: ml_collections.ConfigDict,
                  environ: dict = os.environ) -> tuple[str, ...]:
  """Adds the XLA flags `config` asks of the platform jax will start on; -> the flags added.

  XLA reads XLA_FLAGS once, when jax starts its backend: call this before any jax call that does
  (jax.devices(), jax.distributed.initialize(), the first jit).
  """
  platform = 'gpu' if will_run_on_gpu(environ) else CPU
  flags = deterministic_xla_flags(platform, config.get('deterministic', False))
  if flags:
    environ['XLA_FLAGS'] = with_xla_flags(environ.get('XLA_FLAGS', ''), flags)
  return flags


def check_xla_flags(config: ml_collections.ConfigDict, platform: str,
                    environ: Mapping[str, str] = os.environ) -> None:
  """A one-line ConfigError when `config` needs XLA flags on `platform` that jax started without."""
  names = {flag.split('=')[0] for flag in environ.get('XLA_FLAGS', '').split()}
  missing = [f for f in deterministic_xla_flags(platform, config.get('deterministic', False))
             if f.split('=')[0] not in names]
  if missing:
    raise ConfigError(f'deterministic=True on {platform} needs XLA_FLAGS {" ".join(missing)} set '
                      'before jax starts (python -m pretrain.train sets them; in your own '
                      'script, call pretrain.backends.set_xla_flags(config) first)')

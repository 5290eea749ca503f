"""Where a train step's time goes: one profiled loss + gradient pass, grouped by XLA operation.

  python -m benchmarks.profile_step --config tiny|b32 [--set model.dtype=bfloat16] [--top 20]
      [--smoke] [--out FILE]

Compiles the step's loss and gradients (benchmarks.train_throughput's config and synthetic batch),
runs it once under `jax.profiler`, and maps every XLA:CPU thunk of the trace to its instruction in
the compiled HLO. Prints two tables: time per group of fused operations (a fusion is named by the
ops it contains, so the GELU's erfc pieces or the attention's transposes show up as one line), and
every matmul shape with its GFLOP/s. Profiled times run ~1.3x the unprofiled step; compare rows
with each other, not with train_throughput's seconds.
"""

from pretrain.backends.cpu import host_memory

if __name__ == '__main__':  # first, before jax loads: the train step as pretrain/train.py runs it
  host_memory.restart_with_huge_page_malloc()

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile

import jax

from benchmarks.common import print_table, write_json
from benchmarks.train_throughput import bench_setup

_DEFINITION = re.compile(r'\s*(?:ROOT )?%?([\w.\-]+) = (.*)')
_COMPUTATION = re.compile(r'%?([\w.\-]+) .*\{$')
_DOT = re.compile(r'(\S+) dot\(([^)]*)\), (.*?)(?:, metadata.*|$)')
_IGNORED_OPS = {'parameter', 'constant', 'broadcast', 'bitcast', 'reshape'}


def trace_events(config_name: str, smoke: bool, overrides: list[str]) -> tuple[list[dict], str]:
  """Thunk events of one profiled loss + gradient pass, and the compiled HLO text."""
  _, builder, state, batch = bench_setup(config_name, smoke, overrides)
  params = state.params
  compiled = jax.jit(builder.loss_and_grads).lower(params, batch).compile()
  jax.block_until_ready(compiled(params, batch))  # warm-up, not traced
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    jax.block_until_ready(compiled(params, batch))
    jax.profiler.stop_trace()
    path = sorted(glob.glob(os.path.join(trace_dir, 'plugins/profile/*/*.trace.json.gz')))[-1]
    with gzip.open(path) as f:
      events = [e for e in json.load(f)['traceEvents'] if e.get('ph') == 'X']
  return events, compiled.as_text()


def parse_hlo(text: str) -> tuple[dict, dict]:
  """{instruction: its definition}, {computation: its body lines}."""
  definitions, bodies, current = {}, {}, None
  for line in text.splitlines():
    match = _DEFINITION.match(line)
    if match:
      definitions.setdefault(match.group(1), match.group(2))
    computation = _COMPUTATION.match(line)
    if computation and not line.startswith(' '):
      current = bodies.setdefault(computation.group(1), [])
    elif current is not None:
      current.append(line)
  return definitions, bodies


def fused_ops(body: list[str]) -> set[str]:
  """The operations a fused computation applies, leaving out parameters and layout-only ones."""
  return set(re.findall(r'= \S+ (\w+)\(', '\n'.join(body))) - _IGNORED_OPS


def _dims(shape: str) -> list[int]:
  inside = shape.split('[', 1)[1].split(']', 1)[0] if '[' in shape else ''
  return [int(d) for d in re.findall(r'\d+', inside)]


def _dot_row(dot_line: str, body: list[str], definitions: dict) -> tuple[tuple, int]:
  """(lhs shape, rhs shape, output shape, dimension numbers), FLOPs of one dot."""
  out, operands, dims = _DOT.search(dot_line).groups()
  shapes = []
  for name in (o.strip().lstrip('%') for o in operands.split(',')):
    local = [l for l in body if re.match(r'\s*(?:ROOT )?%?' + re.escape(name) + ' = ', l)]
    definition = local[0].split(' = ', 1)[1] if local else definitions.get(name, '?')
    shapes.append(definition.split(' ')[0])
  contracting = re.search(r'lhs_contracting_dims=\{([\d,]*)\}', dims).group(1)
  lhs, k, n_out = _dims(shapes[0]), 1, 1
  for axis in filter(None, contracting.split(',')):
    k *= lhs[int(axis)]
  for d in _dims(out):
    n_out *= d
  return (shapes[0], shapes[1], out, dims), 2 * n_out * k


def group_times(events: list[dict], hlo: str) -> tuple[list[dict], list[dict]]:
  """Rows of time per fused-op group and per matmul shape."""
  definitions, bodies = parse_hlo(hlo)
  groups, counts, dots = collections.Counter(), collections.Counter(), {}
  total = 0.0
  for event in events:
    name = event['name']
    if name.startswith(('$', 'ThunkExecutor')):
      continue
    definition = definitions.get(name, '')
    called = re.search(r'calls=%?([\w.\-]+)', definition)
    body = bodies.get(called.group(1), []) if called else []
    dot_lines = [l for l in body if ' dot(' in l] + ([definition] if ' dot(' in definition else [])
    if dot_lines:
      key, flops = _dot_row(dot_lines[0], body, definitions)
      row = dots.setdefault(key, [0.0, 0, 0])
      row[0], row[1], row[2] = row[0] + event['dur'], row[1] + 1, row[2] + flops
      group = 'matmul'
    elif body:
      group = 'fusion: ' + (','.join(sorted(fused_ops(body))) or 'broadcast')
    else:
      group = (definition.split('(')[0].split() or ['?'])[-1]
    groups[group] += event['dur']
    counts[group] += 1
    total += event['dur']
  group_rows = [{'group': g, 'ms': round(us / 1e3, 1), 'share': round(us / total, 3),
                 'count': counts[g]} for g, us in groups.most_common()]
  dot_rows = [{'lhs': k[0], 'rhs': k[1], 'out': k[2], 'dims': k[3], 'count': n,
               'ms': round(us / 1e3, 1), 'gflop_s': round(flops / us / 1e3, 1)}
              for k, (us, n, flops) in sorted(dots.items(), key=lambda kv: -kv[1][0])]
  return group_rows, dot_rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', choices=('tiny', 'b32', 'demo'), default='tiny')
  parser.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE')
  parser.add_argument('--top', type=int, default=20, help='rows of each table to print')
  parser.add_argument('--smoke', action='store_true', help='CI sizes')
  parser.add_argument('--out', default=None)
  args = parser.parse_args()
  events, hlo = trace_events(args.config, args.smoke, args.set)
  group_rows, dot_rows = group_times(events, hlo)
  print_table(group_rows[:args.top], ['group', 'ms', 'share', 'count'])
  print()
  print_table(dot_rows[:args.top], ['ms', 'count', 'gflop_s', 'lhs', 'rhs', 'out', 'dims'])
  out = args.out or f'benchmarks/results/profile_step_{args.config}.json'
  write_json(out, {'results': group_rows, 'matmuls': dot_rows, 'overrides': args.set})


if __name__ == '__main__':
  main()

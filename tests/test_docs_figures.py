"""Figures the README quotes are regenerated and compared, so documentation cannot drift silently.

The README's plan tables (CLIP B/32 from configs/clip_vit_b32.py, and B/16 and L/14 from
configs/clip.py, at batch 32,768 on 32 x 8 devices) are produced by `python -m pretrain.plan`; the
rows the suite re-plans (see CHECKED) must agree within TOLERANCE. On drift the failure prints the
regenerated row to paste into the README.
"""

import os
import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT

TOLERANCE = 0.05  # relative: XLA's buffer assignment moves a little between versions
HEADER = '| variant (`--config.` overrides) | peak temporaries | estimated peak | model TFLOP / step |'
B32 = 'configs/clip_vit_b32.py'
# README row label -> the overrides it stands for (on B32).
ROWS = {
    'the recipe as written (fp32, unrolled, no remat)': [],
    '`model.scan_layers=True model.image_remat=full model.text_remat=full`': [
        '--config.model.scan_layers=True', '--config.model.image_remat=full',
        '--config.model.text_remat=full'],
    '`... scan + remat=dots + model.dtype=bfloat16`': [
        '--config.model.scan_layers=True', '--config.model.image_remat=dots',
        '--config.model.text_remat=dots', '--config.model.dtype=bfloat16'],
    '`accum_steps=4 model.scan_layers=True`': [
        '--config.accum_steps=4', '--config.model.scan_layers=True'],
    '`batch_size=131072 loss.impl=tiled` + scan + remat full': [
        '--config.batch_size=131072', '--config.loss.impl=tiled', '--config.model.scan_layers=True',
        '--config.model.image_remat=full', '--config.model.text_remat=full'],
}
CLIP_HEADER = ('| `configs/clip.py:VARIANT` (`--config.` overrides) | peak temporaries '
               '| estimated peak | model TFLOP / step |')
_FULL_REMAT = ['--config.model.image_remat=full', '--config.model.text_remat=full']
# README row label -> (config spec, overrides).
CLIP_ROWS = {
    '`b16` as written (bf16, unrolled, no remat)': ('configs/clip.py:b16', []),
    '`b16 model.scan_layers=True model.image_remat=full model.text_remat=full`': (
        'configs/clip.py:b16', ['--config.model.scan_layers=True', *_FULL_REMAT]),
    '`l14` as written (bf16, scan, remat=dots)': ('configs/clip.py:l14', []),
    '`l14 model.image_remat=full model.text_remat=full`': ('configs/clip.py:l14', _FULL_REMAT),
    '`l14_336` as written (bf16, scan, image remat=full)': ('configs/clip.py:l14_336', []),
}


def readme_table(header: str = HEADER) -> dict[str, tuple[float, float, float]]:
  """Row label -> (peak temporaries GiB, estimated peak GiB, TFLOP) as the README states them."""
  with open(os.path.join(ROOT, 'README.md')) as f:
    text = f.read()
  start = text.index(header)
  rows = {}
  for line in text[start:].splitlines()[2:]:
    if not line.startswith('|'):
      break
    label, temps, peak, tflop = (cell.strip() for cell in line.strip('|').split('|'))
    rows[label] = (float(temps.split()[0]), float(peak.split()[0]), float(tflop))
  return rows


def planned(overrides: list[str], spec: str = B32) -> tuple[float, float, float]:
  """(peak temporaries GiB, estimated peak GiB, TFLOP per step) from `pretrain.plan`."""
  env = dict(os.environ, PYTHONPATH=ROOT)
  result = subprocess.run(
      [sys.executable, '-m', 'pretrain.plan', '--config', spec,
       '--mesh', 'data=32,fsdp=8', *overrides], cwd=ROOT, env=env, capture_output=True,
      text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-2000:]
  find = lambda pattern: float(re.search(pattern, result.stdout).group(1))
  return (find(r'peak temporaries\s+([\d.]+) GiB'), find(r'estimated peak\s+([\d.]+) GiB'),
          find(r'model FLOPs/step\s+([\d.]+) TFLOP'))


def test_readme_plan_tables_have_the_rows_this_test_regenerates():
  assert list(readme_table()) == list(ROWS)
  assert list(readme_table(CLIP_HEADER)) == list(CLIP_ROWS)


# The rows re-planned in the suite: B/32 on both compile paths (unrolled fp32 without remat;
# scanned bf16 with remat=dots, the path B/16 and L/14 take); each costs 1-4 min of 2 cores, so the
# other rows, which combine the same levers on other towers, are re-planned by hand
# (`python -m pretrain.plan ...`, as in the README) when they change.
CHECKED = {'b32': 'the recipe as written (fp32, unrolled, no remat)',
           'b32_scan_bf16': '`... scan + remat=dots + model.dtype=bfloat16`'}


@pytest.mark.slow
@pytest.mark.parametrize('row', list(CHECKED))
def test_readme_plan_table_matches_what_plan_prints(row):
  label = CHECKED[row]
  now_values = planned(ROWS[label])
  fresh = f'| {label} | {now_values[0]:.2f} GiB | {now_values[1]:.2f} GiB | {now_values[2]:.2f} |'
  for name, now, then in zip(('temporaries', 'peak', 'TFLOP'), now_values,
                             readme_table()[label]):
    assert abs(now - then) <= TOLERANCE * then, (
        f'README plan table drifted ({label}: {name} {then} documented, {now} now); '
        f'regenerated row:\n{fresh}')

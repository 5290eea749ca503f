"""Every source format into training batches: slicing, resume, bad records, mixtures, modes."""

import io

import grain
import ml_collections
import numpy as np
import pytest
from PIL import Image

from data.mixture import MixtureSource
from data.pipeline import train_dataset
from data.records import BAD_KINDS, BadRecord, decode_image
from data.shapes import ShapesSource
from data.sources import open_source
from data.tfds_source import array_to_image
from data.tokenizer import get_tokenizer
from data.transforms import eval_transform
from tests import corpora

COUNT = 24  # records per format; epochs of 3 global batches of 8


def data_cfg(policy='skip', threads=2):
  return ml_collections.ConfigDict(dict(resize=36, flip=True, num_threads=threads, prefetch=2,
                                        workers=0, on_bad_record=policy))


def batches(source, n, process_index=0, process_count=1, policy='skip', global_batch=8, state=None,
            threads=2):
  ds = train_dataset(source, get_tokenizer('bytes'), data_cfg(policy, threads), image_size=32,
                     context_length=24, global_batch=global_batch, seed=5,
                     process_index=process_index, process_count=process_count)
  it = iter(ds)
  if state is not None:
    it.set_state(state)
  return it, [next(it) for _ in range(n)]


@pytest.fixture(scope='module')
def specs(tmp_path_factory):
  root = tmp_path_factory.mktemp('formats')
  return corpora.every_format(str(root), COUNT)


FORMATS = ['csv', 'tsv', 'jsonl', 'wds', 'imagefolder']


@pytest.mark.parametrize('fmt', FORMATS)
def test_source_reads_into_training_batches(specs, fmt, tmp_path):
  source = open_source(specs[fmt], cache_dir=str(tmp_path))
  assert len(source) == COUNT
  _, [batch] = batches(source, 1)
  assert batch['image'].shape == (8, 32, 32, 3) and batch['image'].dtype == np.uint8
  assert batch['text'].shape == (8, 24) and np.all(batch['text'][:, 0] > 0)
  assert batch['bad'].sum() == 0


def test_formats_hold_the_same_records(specs, tmp_path):
  csv_src = open_source(specs['csv'])
  tsv_src = open_source(specs['tsv'])
  wds_src = open_source(specs['wds'], cache_dir=str(tmp_path))
  jsonl_src = open_source(specs['jsonl'])
  for i in (0, 5, COUNT - 1):
    assert csv_src[i]['caption'] == tsv_src[i]['caption'] == wds_src[i]['caption']
    assert jsonl_src[i]['captions'] == wds_src[i]['captions'] == ShapesSource('retrieval', 32)[i]['captions']
    np.testing.assert_array_equal(np.asarray(csv_src[i]['image']), np.asarray(wds_src[i]['image']))


@pytest.mark.parametrize('fmt', FORMATS)
def test_two_processes_read_disjoint_slices_of_the_same_global_batch(specs, fmt, tmp_path):
  source = open_source(specs[fmt], cache_dir=str(tmp_path))
  _, whole = batches(source, 3)
  parts = [batches(source, 3, p, 2)[1] for p in range(2)]
  for step in range(3):
    for key in ('image', 'text'):
      np.testing.assert_array_equal(
          np.concatenate([parts[0][step][key], parts[1][step][key]]), whole[step][key])


@pytest.mark.parametrize('fmt', FORMATS)
def test_resume_mid_epoch_gives_the_identical_next_batch(specs, fmt, tmp_path):
  source = open_source(specs[fmt], cache_dir=str(tmp_path))
  it, _ = batches(source, 2)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]  # crosses into the second epoch
  _, resumed = batches(source, 3, state=state)
  for want, got in zip(expected, resumed):
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_wds_index_is_cached_and_rebuilt_when_a_shard_changes(specs, tmp_path):
  cache = tmp_path / 'cache'
  first = open_source(specs['wds'], cache_dir=str(cache))
  files = sorted(cache.iterdir())
  assert len(files) == len(first.paths)
  stamps = [f.stat().st_mtime_ns for f in files]
  open_source(specs['wds'], cache_dir=str(cache))
  assert [f.stat().st_mtime_ns for f in files] == stamps  # reused
  shard = first.paths[0]
  with open(shard, 'ab') as f:  # a changed shard (appended padding block)
    f.write(b'\0' * 512)
  open_source(specs['wds'], cache_dir=str(cache))
  assert [f.stat().st_mtime_ns for f in sorted(cache.iterdir())] != stamps


def _epoch_bad_counts(source, global_batch):
  n_batches = len(source) // global_batch
  _, got = batches(source, n_batches, global_batch=global_batch)
  total = sum(b['bad'].sum(axis=0) for b in got)
  return {kind: int(n) for kind, n in zip(BAD_KINDS, total) if n}


def test_bad_records_in_csv_are_skipped_and_counted_exactly(tmp_path):
  max_pixels = 64 * 64
  path, expected = corpora.csv_with_bad_records(str(tmp_path), good=16, max_pixels=max_pixels)
  source = open_source(f'csv:{path}', max_pixels=max_pixels)
  assert len(source) == 24
  assert _epoch_bad_counts(source, 8) == expected


def test_bad_records_in_wds_are_skipped_and_counted_exactly(tmp_path):
  max_pixels = 64 * 64
  spec, expected = corpora.wds_with_bad_records(str(tmp_path), good=15, max_pixels=max_pixels)
  source = open_source(f'wds:{spec}', cache_dir=str(tmp_path / 'c'), max_pixels=max_pixels)
  assert [p.kind for p in source.problems] == ['truncated_shard']
  kept = [k for k in range(len(source)) if source.samples[k][0] == 1]  # from the cut shard
  assert 0 < len(kept) < 4  # the complete samples before the cut survive
  counts = _epoch_bad_counts(source, len(source))
  assert counts == {k: n for k, n in expected.items() if k != 'truncated_shard'}


def test_error_policy_names_the_record(tmp_path):
  path, _ = corpora.csv_with_bad_records(str(tmp_path), good=0, max_pixels=64 * 64)
  source = open_source(f'csv:{path}', max_pixels=64 * 64)
  with pytest.raises(BadRecord, match=r'bad record in bad.csv, key row \d+: .*'):
    batches(source, 1, policy='error', threads=1)


def test_mixture_draws_in_the_configured_proportions():
  a, b = ShapesSource('train', 16, size=50), ShapesSource('retrieval', 16, size=30)
  mix = MixtureSource([a, b], [0.75, 0.25])
  order = grain.MapDataset.range(len(mix)).shuffle(seed=0)
  picks = [mix.locate(order[i])[0] for i in range(4000)]
  assert abs(np.mean(np.array(picks) == 0) - 0.75) < 0.02  # stated tolerance: 2 points
  block = [mix.locate(i)[0] for i in range(100)]  # interleaved within a block
  assert abs(np.mean(np.array(block) == 0) - 0.75) <= 0.01
  assert mix[3]['component'] == mix.locate(3)[0]


def test_mixture_spec_opens_weighted_sources(specs):
  mix = open_source(f'3*{specs["csv"]};1*shapes:train')
  assert isinstance(mix, MixtureSource) and mix.counts == [750, 250]


@pytest.mark.parametrize('mode', ['L', 'LA', 'P', 'RGBA', 'CMYK', 'I;16', 'I', '1', 'RGB'])
def test_every_image_mode_decodes_to_rgb(mode):
  rng = np.random.default_rng(0)
  rgb = Image.fromarray(rng.integers(0, 256, (10, 12, 3), np.uint8))
  deep = Image.fromarray(rng.integers(0, 65535, (10, 12)).astype(np.uint16))  # mode I;16
  image = rgb.convert(mode) if mode not in ('I;16', 'I') else (
      deep if mode == 'I;16' else deep.convert('I'))
  buffer = io.BytesIO()
  image.save(buffer, format='TIFF' if mode in ('I;16', 'I', 'CMYK') else 'PNG')
  out = decode_image(buffer.getvalue(), 'test', 'k', 10**6)
  assert out.mode == 'RGB' and out.size == (12, 10)
  if mode == 'RGBA':  # transparent pixels composite on white, not black
    transparent = rgb.convert('RGBA')
    transparent.putalpha(0)
    buffer = io.BytesIO()
    transparent.save(buffer, format='PNG')
    assert np.all(np.asarray(decode_image(buffer.getvalue(), 't', 'k', 10**6)) == 255)


def test_arrays_and_decoded_files_share_one_rgb_conversion():
  # A transparent RGBA array (a source's pixels, or a TFDS image) composites on white exactly as a
  # transparent PNG file does, whichever way it reaches the transforms.
  rgba = np.random.default_rng(0).integers(0, 256, (10, 12, 4), np.uint8)
  rgba[..., 3] = 0
  assert np.all(eval_transform(rgba, 8) == 255)
  assert np.all(np.asarray(array_to_image(rgba)) == 255)
  grey = np.arange(120, dtype=np.uint8).reshape(10, 12, 1)
  assert np.array_equal(np.asarray(array_to_image(grey)), np.repeat(grey, 3, axis=-1))

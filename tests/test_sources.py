"""Every source format into training batches: slicing, resume, bad records, mixtures, modes."""

import io

import grain
import ml_collections
import numpy as np
import pytest
from PIL import Image

from data.errors import ConfigError
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
  kept = [k for k in range(len(source)) if source.shard_of(k) == 1]  # from the cut shard
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


DIGITS = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine')


@pytest.fixture
def digit_folders(tmp_path):
  for name in DIGITS:
    (tmp_path / 'digits' / name).mkdir(parents=True)
  return open_source(f'imagefolder:{tmp_path / "digits"}')


def _names_file(tmp_path, names):
  path = tmp_path / 'names.txt'
  path.write_text('\n'.join(names) + '\n')
  return str(path)


def test_imagefolder_labels_follow_sorted_folders_and_keep_their_names(digit_folders):
  assert digit_folders.label_names == sorted(DIGITS)
  assert digit_folders.classnames == sorted(DIGITS)


def test_classnames_listing_the_folders_in_another_order_map_by_name(digit_folders, tmp_path):
  from eval.classnames import resolve_classnames
  # The case: zero..nine for folders sorted eight, five, four, ...: by position every
  # label would get another digit's name.
  names = resolve_classnames(digit_folders, 'digits', _names_file(tmp_path, DIGITS))
  assert names == sorted(DIGITS)
  spelled = [f'  {n.upper()}  ' for n in DIGITS]  # case and spaces do not matter
  assert resolve_classnames(digit_folders, 'digits', _names_file(tmp_path, spelled)) == [
      n.strip() for n in sorted(spelled, key=str.casefold)]


def test_classnames_that_rename_in_label_order_are_taken_by_position(digit_folders, tmp_path):
  from eval.classnames import resolve_classnames
  renamed = [f'the digit {d}' for d in sorted(DIGITS)]
  assert resolve_classnames(digit_folders, 'digits', _names_file(tmp_path, renamed)) == renamed
  # Names that agree with the folders where they overlap are a renaming too.
  partly = [n if i % 2 else f'digit {n}' for i, n in enumerate(sorted(DIGITS))]
  assert resolve_classnames(digit_folders, 'digits', _names_file(tmp_path, partly)) == partly


@pytest.mark.parametrize('names, message', [
    (['one', 'zero', *[f'x{i}' for i in range(8)]], "'one' on line 1, but it is class 4 of digits"),
    (DIGITS[:9], '9 names for the 10 classes of digits'),
    ([*DIGITS, 'ten'], '11 names for the 10 classes of digits'),
])
def test_classnames_against_the_labels_are_refused_in_one_line(digit_folders, tmp_path, names,
                                                               message):
  from data.errors import ConfigError
  from eval.classnames import resolve_classnames
  with pytest.raises(ConfigError, match=message) as error:
    resolve_classnames(digit_folders, 'digits', _names_file(tmp_path, names))
  assert '\n' not in str(error.value)


def test_shapes_labels_do_not_follow_assigned_names():
  source = ShapesSource('zeroshot', 16, size=96)
  source.classnames = source.classnames[:40]
  assert source.labels()[40:48] == list(range(40, 48)) and source[47]['label'] == 47


def test_shapes_size_option_takes_the_first_records_of_any_length():
  small = open_source('shapes:retrieval?size=3', 16, 0)
  big = open_source('shapes:retrieval?size=600', 16, 0)
  default = ShapesSource('retrieval', 16)
  assert (len(small), len(big), len(default)) == (3, 600, 500)
  assert big[2]['captions'] == small[2]['captions'] == default[2]['captions']
  np.testing.assert_array_equal(np.asarray(big[499]['image']), np.asarray(default[499]['image']))
  assert big[599]['key'] == 'shapes_retrieval/599'
  with pytest.raises(IndexError):
    small[3]
  for bad in ('0', '-2', 'ten'):
    with pytest.raises(ConfigError, match='size must be a whole number'):
      open_source(f'shapes:train?size={bad}', 16, 0)


@pytest.mark.parametrize('name, text', [('header.csv', 'image,caption\n'), ('empty.jsonl', ''),
                                        ('blank.jsonl', '\n\n')])
def test_a_source_without_records_is_one_config_error(tmp_path, name, text):
  from data.errors import ConfigError
  (tmp_path / name).write_text(text)
  source = open_source(f'{name.split(".")[1]}:{tmp_path / name}')
  with pytest.raises(ConfigError, match=f'the training data {name} has no records'):
    train_dataset(source, get_tokenizer('shapes'), data_cfg(), image_size=8, context_length=8,
                  global_batch=8, seed=0, process_index=0, process_count=1)


@pytest.mark.parametrize('name, text, where', [
    ('urls.csv', 'image,caption\nlocal.png,a\nhttps://example.com/a.png,b\n', 'row 3'),
    ('urls.jsonl', '{"image": "a.png", "caption": "a"}\n{"caption": "b", "image": "gs://b/b.png"}\n'
                   '{"caption": "c", "image": "ftp://example.com/c.png"}\n', 'line 3'),
])
def test_web_urls_where_image_paths_belong_are_refused(tmp_path, name, text, where):
  """gs:// and s3:// image URLs are read (tests/test_bucket_data.py); other schemes are refused."""
  from data.errors import ConfigError
  (tmp_path / name).write_text(text)
  with pytest.raises(ConfigError, match=f'{where}: image .*://.* is a (https|ftp):// URL; '
                                        'csv:/jsonl: sources read local files and gs:// or s3:// '
                                        'objects only'):
    open_source(f'{name.split(".")[1]}:{tmp_path / name}')


def test_a_source_whose_every_record_is_bad_stops_in_one_line(tmp_path, capsys):
  from data.pipeline import PrepareExample
  from data.records import BrokenSource
  rows = ''.join(f'missing{i}.png,a red circle\n' for i in range(5))
  (tmp_path / 'gone.csv').write_text('image,caption\n' + rows)
  source = open_source(f'csv:{tmp_path / "gone.csv"}')
  prepare = PrepareExample(source, get_tokenizer('shapes'), 8, 8, False, 8, 0)
  with pytest.raises(BrokenSource, match=r'every record of gone.csv is bad \(read from index 3\)'
                                         r', the last: .*missing2.png does not exist'):
    prepare((0, 3))
  assert capsys.readouterr().err.count('warning: skipping') == 5  # each tried once, not 100 times

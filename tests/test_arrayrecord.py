"""`arrayrecord:` sources and `python -m data.convert`: byte-exact conversion, the same records,
the same training batches and loss as the source converted."""

import copy
import csv
import io
import os
import subprocess
import sys
import tarfile

import ml_collections
import numpy as np
import pytest
from PIL import Image

from data.arrayrecord_source import SUFFIX, ArrayRecordSource, decode_record, encode_record
from data.convert import convert
from data.errors import ConfigError
from data.make_corpus import write_corpus
from data.pipeline import train_dataset
from data.records import BadRecord
from data.shapes import ShapesSource
from data.sources import open_source
from data.tokenizer import get_tokenizer
from tests.helpers import ROOT

COUNT = 20


@pytest.fixture(scope='module')
def corpora(tmp_path_factory):
  """name -> (source spec, arrayrecord spec) for csv:, wds: (2 shards) and shapes: (embedded)."""
  root = tmp_path_factory.mktemp('arrayrecord')
  specs = {'csv': write_corpus('csv', str(root / 'csv'), COUNT, 'train', 32),
           'wds': write_corpus('wds', str(root / 'wds'), COUNT, 'retrieval', 32, per_shard=12),
           'shapes': 'shapes:zeroshot'}
  out = {}
  for name, spec in specs.items():
    converter, out_spec = convert(spec, str(root / f'{name}_ar'), shards=3, count=COUNT,
                                  image_size=32)
    assert sum(converter.written) == COUNT and converter.skipped == {}
    out[name] = (spec, out_spec)
  return out


def stored(out_spec: str) -> list[tuple[dict, bytes]]:
  """(header, image bytes) of every record, in order, read straight from the files."""
  from array_record.python.array_record_module import ArrayRecordReader
  folder = out_spec.split(':', 1)[1]
  found = []
  for name in sorted(n for n in os.listdir(folder) if n.endswith(SUFFIX)):
    reader = ArrayRecordReader(os.path.join(folder, name))
    found += [decode_record(r, 'test', name) for r in reader.read_all()]
  return found


def test_csv_round_trips_image_files_and_captions_byte_for_byte(corpora):
  spec, out_spec = corpora['csv']
  folder = os.path.dirname(spec.split(':', 1)[1])
  with open(os.path.join(folder, 'captions.csv'), newline='') as f:
    rows = list(csv.DictReader(f))
  records = stored(out_spec)
  assert len(records) == len(rows) == COUNT
  for (header, image), row in zip(records, rows):
    with open(os.path.join(folder, row['image']), 'rb') as f:
      assert image == f.read()
    assert header['caption'].encode() == row['caption'].encode()


def test_wds_round_trips_members_byte_for_byte(corpora):
  spec, out_spec = corpora['wds']
  members = {}
  for path in sorted(open_source(spec).paths):
    with tarfile.open(path) as tar:
      for info in tar:
        members[info.name] = tar.extractfile(info).read()
  records = stored(out_spec)
  assert len(records) == COUNT
  for i, (header, image) in enumerate(records):
    assert image == members[f'{i:09d}.jpg']
    assert '\n'.join(header['captions']).encode() == members[f'{i:09d}.txt']
    assert len(header['captions']) == 5


def test_shapes_pixels_are_stored_as_lossless_png(corpora):
  _, out_spec = corpora['shapes']
  source = ShapesSource('zeroshot', 32)
  for i, (header, image) in enumerate(stored(out_spec)):
    assert image[:8] == b'\x89PNG\r\n\x1a\n'
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(image))),
                                  source[i]['image'])
    assert header == {'key': f'shapes_zeroshot/{i}', 'caption': source[i]['caption'],
                      'label': source[i]['label']}


@pytest.mark.parametrize('name', ['csv', 'wds', 'shapes'])
def test_arrayrecord_source_gives_the_same_records(corpora, name):
  spec, out_spec = corpora[name]
  original, converted = open_source(spec, image_size=32), open_source(out_spec)
  assert isinstance(converted, ArrayRecordSource) and len(converted) == COUNT
  assert len(converted.paths) == 3 and converted.problems == []
  assert getattr(converted, 'classnames', None) == getattr(original, 'classnames', None)
  for i in range(0, COUNT, 3):
    a, b = original[i], converted[i]
    assert sorted(a) == sorted(b)
    for field in set(a) - {'image'}:
      assert a[field] == b[field], field
    np.testing.assert_array_equal(np.asarray(a['image']), np.asarray(b['image']))
    assert converted.text(i) == original.text(i)
  with pytest.raises(IndexError):
    converted[COUNT]  # pylint: disable=pointless-statement


def test_a_copied_source_reopens_its_readers(corpora):
  """grain ships a source to worker processes through __getstate__: open readers stay behind."""
  source = open_source(corpora['wds'][1])
  first = source[4]
  clone = copy.deepcopy(source)
  assert all(r is None for r in clone._readers)  # pylint: disable=protected-access
  assert clone[4]['captions'] == first['captions']


def test_grain_worker_processes_read_the_same_batches(corpora):
  from absl import flags
  flags.FLAGS.mark_as_parsed()  # grain worker processes read absl flags
  spec = corpora['wds'][1]
  for a, b in zip(_batches(spec), _batches(spec, workers=1)):
    np.testing.assert_array_equal(a['image'], b['image'])


def test_corrupted_records_raise_bad_record(tmp_path):
  from array_record.python.array_record_module import ArrayRecordWriter
  good = encode_record({'key': 'k0', 'caption': 'a cat'}, _png())
  # good, not a record, a cut image, a header that is not JSON, no caption
  payloads = [good, b'junk', encode_record({'key': 'k2', 'caption': 'x'}, _png()[:500]),
              good[:4] + good[4:8] + b'{not json' + good[8:], encode_record({'key': 'k4'}, _png())]
  writer = ArrayRecordWriter(str(tmp_path / f'bad{SUFFIX}'), 'group_size:1')
  for p in payloads:
    writer.write(p)
  writer.close()
  source = ArrayRecordSource(str(tmp_path))
  assert source[0]['caption'] == 'a cat'
  kinds = []
  for i in range(1, len(payloads)):
    with pytest.raises(BadRecord) as e:
      source[i]  # pylint: disable=pointless-statement
    kinds.append(e.value.kind)
  assert kinds == ['bad_json_line', 'truncated_image', 'bad_json_line', 'missing_caption']
  # A damaged chunk (riegeli's checksum) is a bad record too, not a crash.
  data = bytearray((tmp_path / f'bad{SUFFIX}').read_bytes())
  data[300] ^= 0xFF
  (tmp_path / 'damaged').mkdir()
  (tmp_path / 'damaged' / f'x{SUFFIX}').write_bytes(bytes(data))
  damaged = ArrayRecordSource(str(tmp_path / 'damaged'))
  errors = []
  for i in range(len(damaged)):
    try:
      damaged[i]  # pylint: disable=pointless-statement
    except BadRecord as e:
      errors.append(e)
  assert errors and all(isinstance(e, BadRecord) for e in errors)


def _png() -> bytes:
  from data.convert import png_bytes
  return png_bytes(np.random.default_rng(0).integers(0, 256, (16, 16, 3), np.uint8))


def _batches(spec: str, steps: int = 2, workers: int = 0) -> list[dict]:
  cfg = ml_collections.ConfigDict(dict(resize=40, flip=True, num_threads=2, prefetch=2,
                                       workers=workers, on_bad_record='skip'))
  ds = train_dataset(open_source(spec, image_size=32), get_tokenizer('bytes'), cfg,
                     image_size=16, context_length=8, global_batch=16, seed=1, process_index=0,
                     process_count=1)
  it = iter(ds)
  return [next(it) for _ in range(steps)]


def test_training_batches_and_loss_are_the_same_as_the_original(corpora):
  import jax
  from tests.helpers import mesh, step_builder, tiny_config
  spec, out_spec = corpora['wds']
  original, converted = _batches(spec), _batches(out_spec)
  for a, b in zip(original, converted):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  config = tiny_config()
  config.model.vocab_size = 260  # bytes tokenizer
  builder = step_builder(config, mesh(8, 1))
  loss = jax.jit(lambda params, batch: builder.loss_and_grads(params, batch)[0][0])
  params = builder.init_state().params
  losses = [[float(loss(params, {k: b[k] for k in ('image', 'text')})) for b in batches]
            for batches in (original, converted)]
  assert losses[0] == losses[1] and np.isfinite(losses[0]).all()


def _cli(*args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'data.convert', *args], cwd=ROOT, text=True,
                        capture_output=True, env={**os.environ, 'PYTHONPATH': ROOT}, timeout=300)


def test_cli_prints_what_it_wrote_and_refuses_bad_specs_in_one_line(corpora, tmp_path):
  spec = corpora['csv'][0]
  done = _cli(spec, '--to', 'arrayrecord', '--out', str(tmp_path / 'out'), '--shards', '2')
  assert done.returncode == 0, done.stderr
  lines = done.stdout.splitlines()
  assert lines[0].startswith(f'wrote {COUNT} records of {spec} in 2 ArrayRecord file(s)')
  assert 'images: original' in lines[0] and lines[1] == f'arrayrecord:{tmp_path / "out"}'
  for bad, message in [('nope:x', "unknown data kind 'nope'"),
                       (f'csv:{tmp_path}/missing.csv', 'does not exist'),
                       (f'{spec};{spec}', 'is a mixture')]:
    done = _cli(bad, '--to', 'arrayrecord', '--out', str(tmp_path / 'other'))
    assert done.returncode == 2 and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
  again = _cli(spec, '--to', 'arrayrecord', '--out', str(tmp_path / 'out'))
  assert again.returncode == 2 and 'already holds' in again.stderr


def test_missing_and_s3_paths_are_one_config_error(tmp_path):
  with pytest.raises(ConfigError, match='does not exist'):
    open_source(f'arrayrecord:{tmp_path}/none')
  with pytest.raises(ConfigError, match='gs:// files only'):
    open_source('arrayrecord:s3://bucket/x')


def test_bucket_output_and_gs_reads(gcs, tmp_path):
  """--out gs:// is written locally then uploaded; arrayrecord:gs:// is read by array_record's own
  GCS client (the emulator through CLOUD_STORAGE_EMULATOR_ENDPOINT)."""
  bucket = gcs.bucket('arrayrecords')
  converter, spec = convert('shapes:zeroshot', f'{bucket}/shapes', shards=2, count=6,
                            image_size=16)
  assert spec == f'arrayrecord:{bucket}/shapes' and sum(converter.written) == 6
  source, original = open_source(spec), ShapesSource('zeroshot', 16)
  assert len(source) == 6 and source.classnames == original.classnames
  for i in range(6):
    np.testing.assert_array_equal(np.asarray(source[i]['image']), original[i]['image'])
    assert source[i]['key'] == original[i]['key']
  pattern = open_source(f'arrayrecord:{bucket}/shapes/*-of-00002{SUFFIX}')
  assert len(pattern) == 6 and pattern.text(5) == original.text(5)


def test_s3_output_is_uploaded_and_its_reading_refused_in_one_line(s3):
  bucket = s3.bucket('arrayrecords')
  convert('shapes:zeroshot', f'{bucket}/shapes', shards=2, count=4, image_size=16)
  from data import storage
  assert storage.listdir(f'{bucket}/shapes') == [
      'arrayrecord.json', f'shapes_zeroshot-00000-of-00002{SUFFIX}',
      f'shapes_zeroshot-00001-of-00002{SUFFIX}']
  with pytest.raises(ConfigError, match='opens local and gs:// files only'):
    open_source(f'arrayrecord:{bucket}/shapes')


def test_truncated_files_are_problems_or_bad_records(corpora, tmp_path):
  folder = corpora['csv'][1].split(':', 1)[1]
  names = sorted(n for n in os.listdir(folder) if n.endswith(SUFFIX))
  for with_metadata in (False, True):
    copy_to = tmp_path / f'meta{with_metadata}'
    copy_to.mkdir()
    for name in names + (['arrayrecord.json'] if with_metadata else []):
      data = open(os.path.join(folder, name), 'rb').read()
      (copy_to / name).write_bytes(data[:len(data) // 2] if name == names[1] else data)
    source = ArrayRecordSource(str(copy_to))
    if not with_metadata:  # Counted from the footers at start-up: the cut file has none.
      assert [p.kind for p in source.problems] == ['truncated_shard']
      assert len(source) == COUNT - COUNT * 2 // 3 + COUNT // 3
    else:  # Counted by arrayrecord.json: its records are bad records when read.
      assert source.problems == [] and len(source) == COUNT
      with pytest.raises(BadRecord, match='truncated_shard'):
        source[COUNT // 3 + 1]  # pylint: disable=pointless-statement
      assert source[0]['key'] == 'row 2'


@pytest.mark.parametrize('fmt', ['jsonl', 'imagefolder'])
def test_jsonl_and_imagefolder_convert_to_the_same_records(tmp_path, fmt):
  spec = write_corpus(fmt, str(tmp_path / fmt), 8, 'retrieval' if fmt == 'jsonl' else 'zeroshot',
                      32)
  _, out_spec = convert(spec, str(tmp_path / 'ar'), shards=2)
  original, converted = open_source(spec), open_source(out_spec)
  assert len(converted) == 8 and getattr(converted, 'classnames', None) == getattr(
      original, 'classnames', None)
  for i in range(8):
    a, b = original[i], converted[i]
    assert {k: v for k, v in a.items() if k != 'image'} == {
        k: v for k, v in b.items() if k != 'image'}
    np.testing.assert_array_equal(np.asarray(a['image']), np.asarray(b['image']))


def test_tfds_converts_its_pixels_as_png(tmp_path):
  from tests.test_tfds_and_tokenizer import TinyCaptions
  TinyCaptions(data_dir=str(tmp_path), file_format='array_record').download_and_prepare()
  spec = f'tfds:tiny_captions:train?data_dir={tmp_path}'
  converter, out_spec = convert(spec, str(tmp_path / 'ar'))
  assert converter.metadata(spec)['images'] == 'png'
  original, converted = open_source(spec), open_source(out_spec)
  assert len(converted) == 16 and converted.classnames == ['red circle', 'blue square']
  for i in range(16):
    a, b = original[i], converted[i]
    assert (a['caption'], a['captions'], a['label'], a['key']) == (
        b['caption'], b['captions'], b['label'], b['key'])
    np.testing.assert_array_equal(np.asarray(a['image']), np.asarray(b['image']))


def test_bad_records_are_skipped_and_counted_by_kind(tmp_path):
  from tests.corpora import csv_with_bad_records
  path, expected = csv_with_bad_records(str(tmp_path / 'csv'), 5, max_pixels=4096)
  converter, out_spec = convert(f'csv:{path}', str(tmp_path / 'ar'), shards=2, max_pixels=4096)
  assert converter.skipped == expected and sum(converter.written) == 5
  source = open_source(out_spec)
  assert [source[i]['caption'] for i in range(5)] == [f'good caption {i}' for i in range(5)]

"""Every data spec kind from gs:// and s3:// (real API servers, tests/emulators.py) gives exactly the
records it gives from local disk; the wds index cache lives in the bucket and follows its objects."""

import itertools
import os

import numpy as np
import pytest

from data import storage
from data.errors import ConfigError
from data.make_corpus import write_corpus
from data.records import BadRecord
from data.sources import index_cache_dir, open_source
from data.tarindex import SUFFIX, decode
from tests.helpers import read_metrics, run_train

COUNT = 12
_BUCKETS = itertools.count()


def upload_tree(local: str, url: str) -> None:
  """Copies a local folder into a bucket, object for file."""
  for folder, _, names in os.walk(local):
    for name in names:
      relative = os.path.relpath(os.path.join(folder, name), local).split(os.sep)
      with open(os.path.join(folder, name), 'rb') as f:
        storage.write_bytes(storage.join(url, *relative), f.read())


@pytest.fixture(scope='module')
def local_corpus(tmp_path_factory):
  """{kind: spec} of one small corpus on local disk (wds: 3 shards)."""
  root = str(tmp_path_factory.mktemp('local_corpus'))
  return {fmt: write_corpus(fmt, os.path.join(root, fmt), COUNT, 'retrieval', 16, per_shard=5)
          for fmt in ('csv', 'jsonl', 'wds', 'imagefolder')}, root


def bucket_corpus(emulator, local_corpus) -> tuple[dict, str]:
  """The same corpus, uploaded byte for byte into a fresh bucket; {kind: spec} and its URL."""
  specs, root = local_corpus
  url = storage.join(emulator.bucket(f'data-{next(_BUCKETS)}'), 'corpus')
  upload_tree(root, url)
  return {fmt: spec.replace(root, url) for fmt, spec in specs.items()}, url


@pytest.fixture(scope='module')
def on_gcs(gcs, local_corpus):
  return bucket_corpus(gcs, local_corpus)


@pytest.fixture(scope='module')
def on_s3(s3, local_corpus):
  return bucket_corpus(s3, local_corpus)


def glob_spec(spec: str) -> str:
  return spec.split('shard-')[0] + 'shard-*.tar'


def assert_same_records(local, remote):
  assert len(local) == len(remote) and local.name == remote.name
  assert getattr(local, 'classnames', None) == getattr(remote, 'classnames', None)
  for i in range(len(local)):
    want, got = local[i], remote[i]
    assert sorted(want) == sorted(got)
    np.testing.assert_array_equal(np.asarray(got.pop('image')), np.asarray(want.pop('image')))
    assert got == want  # captions, labels and keys (keys carry no path prefix)
    assert remote.text(i) == local.text(i)


KINDS = ['csv', 'jsonl', 'imagefolder', 'wds', 'wds_glob']


def _spec(specs, kind):
  return glob_spec(specs['wds']) if kind == 'wds_glob' else specs[kind]


@pytest.mark.parametrize('kind', KINDS)
def test_every_kind_from_gcs_gives_the_local_records(local_corpus, on_gcs, kind, tmp_path):
  specs, url = on_gcs
  local = open_source(_spec(local_corpus[0], kind), cache_dir=str(tmp_path))
  remote = open_source(_spec(specs, kind), cache_dir=storage.join(url, f'index-{kind}'))
  assert len(local) == COUNT
  assert_same_records(local, remote)


@pytest.mark.parametrize('kind', ['csv', 'wds_glob'])
def test_s3_gives_the_local_records(local_corpus, on_s3, kind, tmp_path):
  specs, url = on_s3
  local = open_source(_spec(local_corpus[0], kind), cache_dir=str(tmp_path))
  remote = open_source(_spec(specs, kind), cache_dir=storage.join(url, 'index'))
  assert_same_records(local, remote)


def test_make_corpus_writes_the_same_objects_to_a_bucket(gcs, local_corpus):
  specs, root = local_corpus
  url = storage.join(gcs.bucket(f'made-{next(_BUCKETS)}'), 'wds')
  spec = write_corpus('wds', url, COUNT, 'retrieval', 16, per_shard=5)
  assert spec == specs['wds'].replace(os.path.join(root, 'wds'), url)
  assert storage.listdir(url) == sorted(os.listdir(os.path.join(root, 'wds')))
  for name in storage.listdir(url):
    with open(os.path.join(root, 'wds', name), 'rb') as f:
      assert storage.read_bytes(storage.join(url, name)) == f.read()


def test_wds_index_cache_lives_in_the_bucket_and_follows_its_objects(gcs, local_corpus):
  url = storage.join(gcs.bucket(f'cache-{next(_BUCKETS)}'), 'corpus')
  upload_tree(os.path.join(local_corpus[1], 'wds'), url)
  spec, cache = f'wds:{url}/shard-{{000000..000002}}.tar', index_cache_dir(f'{url}/run')
  first = open_source(spec, cache_dir=cache)
  names = storage.listdir(cache)
  assert len(names) == 3 and all(n.endswith(SUFFIX) for n in names)
  stamps = {n: storage.version_stamp(storage.join(cache, n)) for n in names}
  header, _ = decode(storage.read_bytes(storage.join(cache, names[0])))
  assert header['stamp'][0].startswith(url)  # the full URL, with its bucket
  again = open_source(spec, cache_dir=cache)
  assert len(again) == len(first) == COUNT
  # Reused: no cache object was written again (a rewrite gets a new generation).
  assert {n: storage.version_stamp(storage.join(cache, n)) for n in names} == stamps
  # A shard replaced by another with fewer samples: its index is rebuilt, the others reused.
  shard0 = first.paths[0]
  storage.write_bytes(shard0, storage.read_bytes(first.paths[2]))
  changed = open_source(spec, cache_dir=cache)
  assert len(changed) == COUNT - 5 + 2
  now = {n: storage.version_stamp(storage.join(cache, n)) for n in names}
  assert sum(now[n] != stamps[n] for n in names) == 1


def test_image_urls_in_rows_read_from_buckets_and_web_urls_are_refused(gcs, local_corpus, tmp_path):
  bucket = gcs.bucket(f'urls-{next(_BUCKETS)}')
  with open(os.path.join(local_corpus[1], 'csv', 'images', '000003.jpg'), 'rb') as f:
    image = f.read()
  storage.write_bytes(f'{bucket}/elsewhere/a.jpg', image)
  (tmp_path / 'urls.csv').write_text(f'image,caption\n{bucket}/elsewhere/a.jpg,a shape\n')
  local = open_source(f'csv:{tmp_path / "urls.csv"}')
  reference = open_source(local_corpus[0]['csv'])
  np.testing.assert_array_equal(np.asarray(local[0]['image']), np.asarray(reference[3]['image']))
  (tmp_path / 'web.jsonl').write_text('{"image": "https://example.com/a.jpg", "caption": "x"}\n')
  with pytest.raises(ConfigError, match=r"line 1: image 'https://example.com/a.jpg' is a https:// "
                                        r'URL; .*gs:// or s3:// objects only') as info:
    open_source(f'jsonl:{tmp_path / "web.jsonl"}')
  assert '\n' not in str(info.value)


def _bad_records(source) -> list:
  """(key, kind) of every record of the source that is bad; None for a good one."""
  found = []
  for i in range(len(source)):
    try:
      source[i]
      found.append(None)
    except BadRecord as e:
      found.append((e.key, e.kind))
  return found


@pytest.mark.parametrize('fmt', ['csv', 'wds'])
def test_bad_records_and_truncated_shards_are_the_same_in_a_bucket(gcs, fmt, tmp_path):
  from tests import corpora  # pylint: disable=import-outside-toplevel
  max_pixels = 64 * 64
  make = corpora.csv_with_bad_records if fmt == 'csv' else corpora.wds_with_bad_records
  path, _ = make(str(tmp_path / 'data'), good=6, max_pixels=max_pixels)
  url = storage.join(gcs.bucket(f'bad-{next(_BUCKETS)}'), 'data')
  upload_tree(str(tmp_path / 'data'), url)
  local = open_source(f'{fmt}:{path}', cache_dir=str(tmp_path / 'c'), max_pixels=max_pixels)
  remote = open_source(f'{fmt}:{path.replace(str(tmp_path / "data"), url)}',
                       cache_dir=storage.join(url, 'index'), max_pixels=max_pixels)
  problems = lambda source: [(p.kind, p.key) for p in getattr(source, 'problems', [])]
  assert problems(remote) == problems(local)
  assert _bad_records(remote) == _bad_records(local)
  assert sum(r is not None for r in _bad_records(local)) >= 7


@pytest.mark.parametrize('kind', KINDS)
def test_missing_objects_and_buckets_are_one_line(on_gcs, kind):
  specs, url = on_gcs
  spec = _spec(specs, kind)
  with pytest.raises(ConfigError, match=r'data path gs://\S+ does not exist'):
    open_source(spec.replace(url, f'{url}-gone'))
  bucket = url.split('/')[2]
  with pytest.raises(ConfigError, match=r"bucket 'no-such-bucket' does not exist") as info:
    open_source(spec.replace(bucket, 'no-such-bucket'))
  assert '\n' not in str(info.value)


def test_tfds_data_dir_in_a_bucket_is_refused_in_one_line(gcs):
  with pytest.raises(ConfigError, match=r'tfds: reads a local data_dir only') as info:
    open_source('tfds:mnist:train?data_dir=gs://some-bucket/tfds')
  assert '\n' not in str(info.value)


@pytest.mark.parametrize('workers', [0, 1])
def test_grain_workers_read_bucket_shards_like_local_ones(local_corpus, on_gcs, workers, tmp_path):
  """Workers get the source by value and open their own shard handles (none are shipped)."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  from absl import flags  # pylint: disable=import-outside-toplevel
  from data.pipeline import train_dataset  # pylint: disable=import-outside-toplevel
  from data.tokenizer import get_tokenizer  # pylint: disable=import-outside-toplevel
  cfg = ml_collections.ConfigDict(dict(resize=36, flip=True, num_threads=2, prefetch=2,
                                       workers=workers, on_bad_record='skip'))
  flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags (the trainer parses them)

  def first_batches(source):
    it = iter(train_dataset(source, get_tokenizer('bytes'), cfg, image_size=32, context_length=24,
                            global_batch=4, seed=5, process_index=0, process_count=1))
    return [next(it) for _ in range(2)]

  local = open_source(local_corpus[0]['wds'], cache_dir=str(tmp_path))
  remote = open_source(on_gcs[0]['wds'], cache_dir=str(tmp_path / 'remote'))
  remote.text(0)  # a handle open in this process now must not travel to the workers
  for want, got in zip(first_batches(local), first_batches(remote)):
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


FAST = ['--config.model.image_size=16', '--config.model.context_length=12',
        '--config.batch_size=32', '--config.optim.warmup_steps=2', '--config.log_every=1',
        '--config.total_steps=4', '--config.eval.zeroshot=']


@pytest.fixture(scope='module')
def train_corpus(tmp_path_factory):
  """A corpus big enough for demo batches of 32, locally: {kind: spec}, its folder."""
  root = str(tmp_path_factory.mktemp('train_corpus'))
  return {fmt: write_corpus(fmt, os.path.join(root, fmt), 96, 'train', 16, per_shard=40)
          for fmt in ('csv', 'wds')}, root


@pytest.mark.slow
def test_demo_trains_a_few_steps_on_s3_data(s3, train_corpus, tmp_path):
  specs, root = train_corpus
  url = storage.join(s3.bucket(f'train-{next(_BUCKETS)}'), 'corpus')
  upload_tree(os.path.join(root, 'wds'), storage.join(url, 'wds'))
  result = run_train(tmp_path, f'--config.data.train={glob_spec(specs["wds"].replace(root, url))}',
                     *FAST)
  assert result.returncode == 0, result.stderr[-2000:]
  assert [r['step'] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]
  assert all(np.isfinite(r['loss']) for r in read_metrics(tmp_path))

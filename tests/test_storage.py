"""data/storage.py on a local folder and on real GCS / S3 API servers (tests/emulators.py)."""

import itertools

import pytest

from data import storage
from data.errors import ConfigError


_BUCKETS = itertools.count()


@pytest.fixture(params=['local', 'gs', 's3'])
def root(request, tmp_path):
  """A writable folder: local, or a fresh bucket on an emulator."""
  if request.param == 'local':
    return str(tmp_path)
  emulator = request.getfixturevalue('gcs' if request.param == 'gs' else 's3')
  return storage.join(emulator.bucket(f'bucket-{next(_BUCKETS)}'), 'run')


def test_write_read_list_remove(root):
  path = storage.join(root, 'sub', 'a.json')
  storage.makedirs(storage.parent(path))
  storage.write_text(path, '{"x": 1}')
  storage.write_bytes(storage.join(root, 'sub', 'b.bin'), b'\x00\x01')
  assert storage.read_text(path) == '{"x": 1}'
  assert storage.is_file(path) and storage.is_dir(storage.join(root, 'sub'))
  assert storage.listdir(storage.join(root, 'sub')) == ['a.json', 'b.bin']
  storage.remove(path)
  storage.remove(path)  # already gone: not an error
  assert not storage.exists(path)


def test_ranged_reads_and_version_stamp(root):
  path = storage.join(root, 'blob')
  storage.write_bytes(path, bytes(range(256)) * 8)
  with storage.open_reader(path) as f:
    f.seek(1000)
    assert f.read(4) == bytes([1000 % 256, 1001 % 256, 1002 % 256, 1003 % 256])
    f.seek(3)
    assert f.read(2) == b'\x03\x04'
  if storage.is_bucket(path):  # one ranged GET, no handle
    assert storage.read_range(path, 1000, 4) == bytes([232, 233, 234, 235])
  first = storage.version_stamp(path)
  assert first[0] == 2048
  storage.write_bytes(path, b'other')
  assert storage.version_stamp(path) != first and storage.version_stamp(path)[0] == 5


def test_read_many_gives_each_file_or_none(root):
  paths = [storage.join(root, name) for name in ('a', 'missing', 'b', 'a')]
  storage.write_bytes(paths[0], b'first')
  storage.write_bytes(paths[2], bytes(range(7)))
  assert storage.read_many(paths) == [b'first', None, bytes(range(7)), b'first']


def test_missing_bucket_is_one_line(gcs, s3):
  for url in ('gs://no-such-bucket/run', 's3://no-such-bucket/run'):
    with pytest.raises(ConfigError, match=r"bucket 'no-such-bucket' does not exist") as info:
      storage.check_reachable(url, 'workdir')
    assert '\n' not in str(info.value)


def test_paths_join_and_split():
  assert storage.join('gs://b/run/', 'checkpoints', '3') == 'gs://b/run/checkpoints/3'
  assert storage.parent('gs://b/run/x.json') == 'gs://b/run'
  assert storage.basename('gs://b/run/') == 'run'
  assert storage.resolve('gs://b/data', 'img/1.jpg') == 'gs://b/data/img/1.jpg'
  assert storage.resolve('gs://b/data', 's3://c/1.jpg') == 's3://c/1.jpg'
  assert storage.absolute('gs://b/run/') == 'gs://b/run'
  with pytest.raises(ConfigError, match='unsupported storage scheme http://'):
    storage.as_path('http://example.com/x')

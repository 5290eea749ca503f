"""wds shard index files: the index step, start-up from the files, reads, process split, resume."""

import os
import tarfile
import threading

import grain
from grain.experimental import index_shuffle
import ml_collections
import numpy as np
import pytest

from data import index as index_cli
from data import storage
from data.errors import ConfigError
from data.pipeline import EpochOrder, ProcessSlice, grain_shuffle_is_a_permutation, train_dataset
from data.sources import open_source
from data.tarindex import BESIDE, JSON_BIT, NONE, decode, index_file, split_name
from data.tokenizer import get_tokenizer
from data.wds import ShardReaders
from tests import corpora

SHARDS, PER_SHARD = 3, 5


@pytest.fixture(scope='module')
def mixed(tmp_path_factory):
  return corpora.mixed_wds(str(tmp_path_factory.mktemp('mixed')), SHARDS, PER_SHARD)


def brute_force(path: str) -> list[tuple[str, dict]]:
  """[(key, {ext: member})] in order of first appearance, by tarfile alone."""
  samples = {}
  with tarfile.open(path) as tar:
    for member in tar.getmembers():
      key, ext = split_name(member.name)
      samples.setdefault(key, {})[ext] = member
  return [(k, v) for k, v in samples.items() if {'jpg', 'png', 'txt', 'json'} & set(v)]


def expected_rows(path: str) -> np.ndarray:
  rows = []
  for _, parts in brute_force(path):
    image = parts.get('jpg') or parts.get('png')
    caption = parts.get('txt') or parts.get('json')
    rows.append([image.offset_data // 512 if image else NONE, image.size if image else 0,
                 caption.offset_data // 512 if caption else NONE,
                 (caption.size | (JSON_BIT if 'json' in parts else 0)) if caption else 0])
  return np.array(rows, np.uint32)


def test_index_files_equal_a_brute_force_walk_of_the_shards(mixed, tmp_path, capsys):
  spec, paths = mixed
  out = str(tmp_path / 'idx')
  assert index_cli.main([f'wds:{spec}', '--out', out, '--workers', '2']) == 0
  total = sum(len(brute_force(p)) for p in paths)
  printed = capsys.readouterr().out
  assert f'corpus: {total:,} samples in {SHARDS} shards; {SHARDS} indexed now' in printed
  for path in paths:
    with open(index_file(path, out), 'rb') as f:
      header, rows = decode(f.read())
    assert header['stamp'] == [os.path.abspath(path), *storage.version_stamp(path)]
    np.testing.assert_array_equal(rows, expected_rows(path))
  source = open_source(f'wds:{spec}', index_dir=out)
  assert source.built == 0 and len(source) == total
  assert source.index_bytes() == 16 * total + 8 * (SHARDS + 1)
  i = 0
  for path in paths:
    with tarfile.open(path) as tar:
      for key, parts in brute_force(path):
        assert source.shard_of(i) == paths.index(path)
        image = parts.get('jpg') or parts.get('png')
        if image:
          assert source.encoded_image(i) == tar.extractfile(image).read()
        caption = parts.get('txt') or parts.get('json')
        raw = tar.extractfile(caption).read().decode() if caption else None
        if caption and image:
          record = source[i]
          assert record['key'] == f'{os.path.basename(path)}/{key}'  # names > 100 chars included
          assert record['caption'] in raw
        elif caption:
          assert source.text(i) == [raw]
        i += 1


def test_start_up_reads_the_index_files_and_announces_the_ones_it_builds(mixed, tmp_path, capsys):
  spec = f'wds:{mixed[0]}'
  cache = str(tmp_path / 'cache')
  first = open_source(spec, cache_dir=cache)
  out = capsys.readouterr().out
  assert first.built == SHARDS and f'data index: {SHARDS} of {SHARDS} shards' in out
  assert f'data index: {SHARDS}/{SHARDS} shards' in out  # progress
  again = open_source(spec, cache_dir=cache)
  assert again.built == 0 and 'data index' not in capsys.readouterr().out
  for got, want in zip(again.shard_rows, first.shard_rows):
    np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(again.starts, np.cumsum([0] + [len(brute_force(p))
                                                               for p in mixed[1]]))


def test_the_index_step_is_resumable_and_follows_changed_shards(tmp_path, capsys):
  spec, paths = corpora.mixed_wds(str(tmp_path / 'c'), 4, 3)
  assert index_cli.main([f'wds:{spec}']) == 0  # beside the shards
  files = [index_file(p, BESIDE) for p in paths]
  stamps = [os.stat(f).st_mtime_ns for f in files]
  capsys.readouterr()
  assert index_cli.main([f'wds:{spec}']) == 0
  assert '0 indexed now, 4 already indexed' in capsys.readouterr().out
  assert [os.stat(f).st_mtime_ns for f in files] == stamps
  with open(paths[2], 'ab') as f:  # a changed shard (one more zero block)
    f.write(b'\0' * 512)
  assert index_cli.main([f'wds:{spec}', '--workers', '3']) == 0
  assert '1 indexed now, 3 already indexed' in capsys.readouterr().out
  assert [os.stat(f).st_mtime_ns != s for f, s in zip(files, stamps)] == [False, False, True, False]
  # A glob over the folder does not take the index files for shards.
  assert len(open_source(f'wds:{tmp_path}/c/*').paths) == 4


def test_truncated_and_missing_shards(tmp_path, capsys):
  spec, expected = corpora.wds_with_bad_records(str(tmp_path), good=3, max_pixels=64 * 64)
  os.rename(tmp_path / 'part-000.tar', tmp_path / 'part-002.tar')
  with_hole = spec.replace('{000..001}', '{000..002}')
  assert index_cli.main([f'wds:{with_hole}']) == 0
  assert 'bad shards: 1 truncated, 1 missing' in capsys.readouterr().out
  with pytest.raises(ConfigError, match='part-000.tar does not exist'):
    open_source(f'wds:{with_hole}')
  source = open_source(f'wds:{with_hole.replace("{000..002}", "{001..002}")}')
  assert source.built == 0 and [p.kind for p in source.problems] == ['truncated_shard']
  assert expected['truncated_shard'] == 1


def data_cfg():
  return ml_collections.ConfigDict(dict(resize=0, flip=False, num_threads=2, prefetch=2,
                                        workers=0, on_bad_record='skip'))


def _batches(source, steps, process_index=0, process_count=1, state=None):
  ds = train_dataset(source, get_tokenizer('bytes'), data_cfg(), image_size=8, context_length=20,
                     global_batch=4, seed=11, process_index=process_index,
                     process_count=process_count)
  it = iter(ds)
  if state is not None:
    it.set_state(state)
  return it, [next(it) for _ in range(steps)]


def test_two_processes_read_each_sample_once_per_epoch(tmp_path):
  spec, _ = corpora.mixed_wds(str(tmp_path), 4, 4)
  source = open_source(f'wds:{spec}')
  keep = [i for i in range(len(source)) if source.row(i)[0] != NONE and source.row(i)[2] != NONE]
  keep = keep[:len(keep) // 4 * 4]  # whole global batches: one epoch is `steps` steps
  captions = sorted(source.text(i)[0] for i in keep)
  tokenizer = get_tokenizer('bytes')
  sub = Subset(source, keep)
  steps = len(sub) // 4
  reads = [_batches(sub, steps, p, 2)[1] for p in range(2)]
  texts = [tuple(row) for p in range(2) for batch in reads[p] for row in batch['text']]
  assert sorted(texts) == sorted(tuple(row) for row in tokenizer.encode(captions, 20))


class Subset:
  """The samples `keep` of a source (the ones that are not bad records)."""

  def __init__(self, source, keep):
    self.source, self.keep, self.name = source, keep, source.name

  def __len__(self):
    return len(self.keep)

  def __getitem__(self, i):
    return self.source[self.keep[i]]


def test_resume_from_index_files_mid_shard_gives_the_identical_next_batch(mixed, tmp_path):
  spec = f'wds:{mixed[0]}'
  source = open_source(spec, cache_dir=str(tmp_path))
  it, _ = _batches(source, 3)  # 12 of 18 samples: mid-epoch, mid-shard
  state = it.get_state()
  expected = [next(it) for _ in range(3)]  # into the next epoch
  reopened = open_source(spec, cache_dir=str(tmp_path))
  assert reopened.built == 0
  _, resumed = _batches(reopened, 3, state=state)
  for want, got in zip(expected, resumed):
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_epoch_order_is_grains_shuffle_and_a_permutation_where_grains_is_not():
  n, seed = 203, 5
  grains = grain.MapDataset.range(n).shuffle(seed=seed).repeat(None)
  order = EpochOrder(n, seed)
  assert [order[p] for p in range(2 * n)] == [int(grains[p]) for p in range(2 * n)]
  # Two processes over the positions of one epoch (n is odd: epochs straddle global batches)
  # read each record exactly once between them.
  views = [ProcessSlice(order, 8, p, 2) for p in range(2)]
  rows = -(-n // 8) * 4  # rows per process covering positions [0, n)
  seen = [views[p][i] for p in range(2) for i in range(rows)]
  assert sorted(index for position, index in seen if position < n) == list(range(n))
  n = 65537  # 2**16 + 1: the call grain's MapDataset.shuffle makes sends 0 and n - 1 to one place
  assert not grain_shuffle_is_a_permutation(n) and grain_shuffle_is_a_permutation(n + 1)
  assert (index_shuffle(0, max_index=n - 1, seed=seed, rounds=4)
          == index_shuffle(n - 1, max_index=n - 1, seed=seed, rounds=4))
  order = EpochOrder(n, seed)
  assert sorted(order[p] for p in range(n, 2 * n)) == list(range(n))  # the second epoch


@pytest.mark.slow
def test_index_step_and_reads_in_a_bucket(gcs, mixed, tmp_path, capsys):
  """Emulator-backed (starts fake-gcs-server): the step writes beside the shards and in a folder
  of the bucket; start-up reads those files; records equal the local ones."""
  spec, paths = mixed
  url = storage.join(gcs.bucket('wds-index'), 'corpus')
  for path in paths:
    with open(path, 'rb') as f:
      storage.write_bytes(storage.join(url, os.path.basename(path)), f.read())
  remote = spec.replace(os.path.dirname(spec), url)
  out = storage.join(gcs.bucket('wds-index-out'), 'idx')
  assert index_cli.main([f'wds:{remote}', '--out', out]) == 0
  assert index_cli.main([f'wds:{remote}']) == 0
  capsys.readouterr()
  assert index_cli.main([f'wds:{remote}', '--out', out]) == 0
  assert f'0 indexed now, {SHARDS} already indexed' in capsys.readouterr().out
  local = open_source(f'wds:{spec}', cache_dir=str(tmp_path))
  for source in (open_source(f'wds:{remote}', index_dir=out),
                 open_source(f'wds:{url}/mixed-*')):  # beside; the glob skips the index files
    assert source.built == 0 and len(source.paths) == SHARDS
    np.testing.assert_array_equal(np.concatenate(source.shard_rows),
                                  np.concatenate(local.shard_rows))
    for i in range(len(local)):
      assert source.text(i) == local.text(i) if local.row(i)[2] != NONE else True
      if local.row(i)[0] != NONE:
        assert source.encoded_image(i) == local.encoded_image(i)


def test_each_thread_keeps_a_bounded_set_of_open_shard_handles(mixed):
  _, paths = mixed
  readers = ShardReaders(paths, keep=2)
  for shard in (0, 1, 2, 0, 2):
    with open(paths[shard], 'rb') as f:
      assert readers.read(shard, 512, 100) == f.read()[512:612]
  handles = readers._local.handles  # pylint: disable=protected-access
  assert list(handles) == [0, 2]  # the least recently used (1) was closed
  assert all(not h.closed for h in handles.values())
  other = []
  thread = threading.Thread(target=lambda: other.append(readers.read(1, 0, 10)))
  thread.start()
  thread.join()
  assert list(readers._local.handles) == [0, 2]  # pylint: disable=protected-access
  with open(paths[1], 'rb') as f:
    assert other == [f.read(10)]

"""The embedded corpus, tokenizers and the training pipeline's slicing and resume."""

import grain
import ml_collections
import numpy as np
import pytest

from data.pipeline import ProcessSlice, train_dataset
from data.shapes import ShapesSource, classnames
from data.tokenizer import get_tokenizer, load_from_workdir, save_to_workdir

DATA_CFG = ml_collections.ConfigDict(dict(resize=0, flip=True, num_threads=2, prefetch=2, workers=0,
                                         on_bad_record='skip'))


def _dataset(source, process_index=0, process_count=1, global_batch=8):
  return train_dataset(source, get_tokenizer('shapes'), DATA_CFG, image_size=16, context_length=12,
                       global_batch=global_batch, seed=3, process_index=process_index,
                       process_count=process_count)


def test_shapes_is_deterministic_and_labelled():
  a, b = ShapesSource('zeroshot', 16), ShapesSource('zeroshot', 16)
  np.testing.assert_array_equal(a[5]['image'], b[5]['image'])
  assert a[5]['label'] == 5 and a.classnames[5] == classnames()[5]
  assert not np.array_equal(a[5]['image'], ShapesSource('zeroshot', 16, seed=1)[5]['image'])
  assert len(ShapesSource('retrieval', 16)[0]['captions']) == 5


def test_process_slices_are_disjoint_and_cover_each_epoch():
  n, global_batch, processes = 40, 8, 4
  order = grain.MapDataset.range(n).shuffle(seed=0).repeat(None)
  views = [ProcessSlice(order, global_batch, p, processes) for p in range(processes)]
  per_epoch = n // processes
  for epoch in range(3):
    seen = [views[p][i][1] for p in range(processes)
            for i in range(epoch * per_epoch, (epoch + 1) * per_epoch)]
    assert sorted(seen) == list(range(n))
  first_epoch = [views[0][i][1] for i in range(per_epoch)]
  second_epoch = [views[0][i][1] for i in range(per_epoch, 2 * per_epoch)]
  assert first_epoch != second_epoch  # reshuffled every epoch


def test_pipeline_refuses_what_the_config_check_refuses_in_the_same_words():
  # The rules live once (data/), so a pipeline built without the config check fails the same way.
  from data.errors import ConfigError
  with pytest.raises(ConfigError, match=r'^batch_size 10 is not divisible by the 4 processes$'):
    _dataset(ShapesSource('train', 16, size=64), process_count=4, global_batch=10)
  bad_policy = ml_collections.ConfigDict({**DATA_CFG.to_dict(), 'on_bad_record': 'ignore'})
  with pytest.raises(ConfigError, match=r"^unknown data.on_bad_record 'ignore'; known: skip, error$"):
    train_dataset(ShapesSource('train', 16, size=64), get_tokenizer('shapes'), bad_policy,
                  image_size=16, context_length=12, global_batch=8, seed=3, process_index=0,
                  process_count=1)

def test_global_batch_is_the_same_for_any_process_count():
  source = ShapesSource('train', 16, size=64)
  single = iter(_dataset(source))
  halves = [iter(_dataset(source, p, 2)) for p in range(2)]
  for _ in range(3):
    whole = next(single)
    parts = [next(h) for h in halves]
    for key in ('image', 'text'):
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])


def test_resume_mid_epoch_gives_identical_next_batches():
  source = ShapesSource('train', 16, size=64)
  it = iter(_dataset(source))
  for _ in range(5):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(4)]  # crosses the epoch boundary at batch 8
  resumed = iter(_dataset(source))
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_batches_are_uint8_images_and_int32_tokens():
  batch = next(iter(_dataset(ShapesSource('train', 16, size=64))))
  assert batch['image'].dtype == np.uint8 and batch['image'].shape == (8, 16, 16, 3)
  assert batch['text'].dtype == np.int32 and batch['text'].shape == (8, 12)


@pytest.mark.parametrize('spec', ['shapes', 'bytes'])
def test_tokenizer_truncation_keeps_end_of_text(spec, tmp_path):
  tok = get_tokenizer(spec, lowercase=True)
  ids = tok.encode(['a large red circle in the top left', 'red'], 5)
  assert ids.shape == (2, 5) and ids.dtype == np.int32
  assert ids[0, -1] == tok.eos_id and 0 not in ids[0]
  assert list(ids[1]).index(tok.eos_id) < 5 and ids[1, -1] == 0
  save_to_workdir(spec, str(tmp_path))
  again = load_from_workdir(spec, str(tmp_path), lowercase=True)
  np.testing.assert_array_equal(again.encode(['a red circle'], 6), tok.encode(['a red circle'], 6))


def test_shapes_tokenizer_knows_every_word():
  tok = get_tokenizer('shapes')
  texts = [ShapesSource('retrieval', 16)[i]['captions'][0] for i in range(20)] + classnames()
  ids = tok.encode(texts, 16)
  assert not np.any(ids == 1)  # no [UNK]

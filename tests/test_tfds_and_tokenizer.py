"""TFDS sources without TensorFlow, and training a sentencepiece tokenizer from a source."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data.sources import open_source
from data.tokenizer import get_tokenizer
from tests.helpers import ROOT
from tests.test_sources import batches


class TinyCaptions(tfds.core.GeneratorBasedBuilder):
  """A captioned, labelled dataset prepared as array_record inside the test."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    # Images as a uint8 tensor: encoding an Image feature at prepare time needs TensorFlow.
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Tensor(shape=(16, 16, 3), dtype=np.uint8),
        'caption': tfds.features.Text(),
        'label': tfds.features.ClassLabel(names=['red circle', 'blue square'])}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(16)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {'image': np.full((16, 16, 3), i * 10, np.uint8), 'caption': f'caption {i}',
                'label': i % 2}


def test_tfds_builder_prepared_in_the_test(tmp_path):
  TinyCaptions(data_dir=str(tmp_path), file_format='array_record').download_and_prepare()
  source = open_source(f'tfds:tiny_captions:train?data_dir={tmp_path}')
  assert len(source) == 16 and source.classnames == ['red circle', 'blue square']
  record = source[3]
  value = int(np.asarray(record['image'])[0, 0, 0])
  assert record['caption'] == f'caption {value // 10}' and record['label'] == (value // 10) % 2
  _, [batch] = batches(source, 1)
  assert batch['image'].shape == (8, 32, 32, 3) and batch['bad'].sum() == 0


def test_tfds_mock_data_labels_become_classnames():
  with tfds.testing.mock_data(num_examples=12):
    source = open_source('tfds:mnist:train')
    assert len(source) == 12 and source.classnames[:3] == ['0', '1', '2']
    record = source[0]
    assert record['image'].mode == 'RGB' and record['caption'] == source.classnames[record['label']]
    _, [batch] = batches(source, 1)
    assert batch['image'].dtype == np.uint8


def test_unknown_tfds_dataset_is_a_one_line_config_error(tmp_path):
  from data.errors import ConfigError
  with pytest.raises(ConfigError, match='tfds:no_such_dataset_xyz:train cannot be opened'):
    open_source(f'tfds:no_such_dataset_xyz:train?data_dir={tmp_path}')


def test_an_unprepared_tfds_dataset_is_refused_not_downloaded(tmp_path, monkeypatch):
  from data.errors import ConfigError
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  data_dir = tmp_path / 'tfds'
  with pytest.raises(ConfigError, match=r'tfds:mnist:train cannot be opened .*a run never '
                                        'downloads'):
    open_source(f'tfds:mnist:train?data_dir={data_dir}')
  assert not (data_dir / 'downloads').exists() and not (tmp_path / 'home').exists()


def test_tokenizer_train_command_makes_a_usable_model(tmp_path):
  out = tmp_path / 'sp.model'
  env = dict(os.environ, PYTHONPATH=ROOT)
  result = subprocess.run([sys.executable, '-m', 'data.tokenizer', 'train', '--data',
                           'shapes:retrieval', '--vocab_size', '64', '--out', str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert '0.00% unknown tokens on a sample of the captions' in result.stdout, result.stdout
  tok = get_tokenizer(f'sentencepiece:{out}', lowercase=True)
  ids = tok.encode(['A small Blue ring near the top right'], 20)[0]
  assert tok.eos_id == 2 and 1 not in ids  # no unknown pieces for corpus words
  pieces = [int(i) for i in ids if i > 2]
  assert tok._sp.decode(pieces) == 'a small blue ring near the top right'

"""The unknown-token rate of a tokenizer on a sample of the training captions."""

import pytest

from data.errors import ConfigError
from data.sources import open_source
from data.tokenizer import get_tokenizer
from data.tokenizer import sample_captions, unknown_rate
from data.tokenizer_fit import WARN_RATE, check_fit


class Captions:
  """A source of captions only."""

  def __init__(self, captions):
    self.captions, self.name = captions, 'captions.csv'

  def __len__(self):
    return len(self.captions)

  def text(self, i):
    return [self.captions[i]]


def test_the_shapes_tokenizer_fits_the_shapes_corpus():
  source = open_source('shapes:train', 16)
  assert check_fit(get_tokenizer('shapes', True), 'shapes', source, 0.1) is None
  assert unknown_rate(get_tokenizer('shapes', True), sample_captions(source)) == 0.0


def test_digit_captions_are_refused_naming_the_rate_and_what_to_use():
  source = Captions(['a handwritten digit seven.'] * 40)
  assert unknown_rate(get_tokenizer('shapes', True), sample_captions(source)) == pytest.approx(0.6)
  with pytest.raises(ConfigError) as error:
    check_fit(get_tokenizer('shapes', True), 'shapes', source, 0.1)
  message = str(error.value)
  assert message.startswith('tokenizer shapes maps 60.0% of the tokens of 40 sampled captions of '
                            'captions.csv to its unknown token (data.max_unknown_token_rate 0.1)')
  assert 'python -m data.tokenizer train' in message and '\n' not in message
  # Overridable: the same data with the threshold raised is a warning.
  assert 'it may not fit this data' in check_fit(get_tokenizer('shapes', True), 'shapes', source,
                                                 1.0)


def test_a_few_unknown_words_warn_and_tokenizers_without_unknowns_pass():
  # 1 unknown word in 25 tokens: 4% is above the warning rate, below the refusal.
  captions = ['a large red circle'] * 5 + ['a large red zebra.']
  rate = unknown_rate(get_tokenizer('shapes', True), captions)
  assert rate == pytest.approx(1 / 25) and WARN_RATE < rate < 0.1
  warning = check_fit(get_tokenizer('shapes', True), 'shapes', Captions(captions), 0.1)
  assert warning.startswith('tokenizer shapes maps 4.0% of the tokens of 6 sampled captions')
  assert check_fit(get_tokenizer('bytes'), 'bytes', Captions(['a handwritten digit.']), 0.0) is None

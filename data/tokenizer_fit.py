"""Does a tokenizer fit the data? The share of a sample of its captions' tokens that are unknown.

A word-level tokenizer pointed at another corpus (the demo's `shapes` one on handwritten digits)
turns the content words into its unknown token: the run trains on captions that say nothing, with
no error anywhere. Measured on a sample at start-up: a warning above WARN_RATE, a ConfigError above
`data.max_unknown_token_rate`.
"""

import numpy as np

from data.errors import ConfigError
from data.records import BadRecord
from data.tokenizer import HFTokenizer, SentencePieceTokenizer, Tokenizer, clean_text

WARN_RATE = 0.02
SAMPLE = 256
UNKNOWN_NAMES = ('[UNK]', '<unk>', '<|unk|>')
ADVICE = ('train one on these captions (python -m data.tokenizer train --data SPEC --vocab_size '
          'N --out PATH, then --config.data.tokenizer=sentencepiece:PATH) or use bytes')


def unknown_id(tokenizer: Tokenizer) -> int | None:
  """The id the tokenizer gives text it cannot represent; None when it has none (bytes, BPE)."""
  if isinstance(tokenizer, SentencePieceTokenizer):
    unk = tokenizer._sp.unk_id()  # pylint: disable=protected-access
    return unk if unk >= 0 else None
  if isinstance(tokenizer, HFTokenizer):
    ids = [tokenizer._tok.token_to_id(name) for name in UNKNOWN_NAMES]  # pylint: disable=protected-access
    return next((i for i in ids if i is not None), None)
  return None


def sample_captions(source, count: int = SAMPLE) -> list[str]:
  """Captions of up to `count` records spread evenly over the source (bad records left out)."""
  indices = np.unique(np.linspace(0, len(source) - 1, min(count, len(source))).astype(int))
  captions = []
  for i in indices:
    try:
      captions.extend(source.text(int(i)))
    except BadRecord:
      continue
  return captions


def unknown_rate(tokenizer: Tokenizer, captions: list[str]) -> float:
  """Unknown tokens / all tokens of `captions` (no end-of-text); 0.0 without an unknown id."""
  unk = unknown_id(tokenizer)
  if unk is None:
    return 0.0
  total = unknown = 0
  for caption in captions:
    ids = tokenizer._ids(clean_text(caption, tokenizer.lowercase))  # pylint: disable=protected-access
    total += len(ids)
    unknown += sum(1 for i in ids if i == unk)
  return unknown / total if total else 0.0


def check_fit(tokenizer: Tokenizer, spec: str, source, max_rate: float) -> str | None:
  """Refuses (ConfigError) a tokenizer whose unknown-token rate on a sample of `source`'s captions
  is above `max_rate`; returns a warning line above WARN_RATE, else None."""
  captions = sample_captions(source)
  rate = unknown_rate(tokenizer, captions)
  said = (f'tokenizer {spec} maps {rate:.1%} of the tokens of {len(captions)} sampled captions '
          f'of {source.name} to its unknown token')
  if rate > max_rate:
    raise ConfigError(f'{said} (data.max_unknown_token_rate {max_rate}): it does not fit this '
                      f'data; {ADVICE}; --config.data.max_unknown_token_rate=1 accepts it')
  if rate > WARN_RATE:
    return f'{said}: it may not fit this data; {ADVICE}'
  return None

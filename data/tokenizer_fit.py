"""Does a tokenizer fit the data? The share of a sample of its captions' tokens that are unknown.

A word-level tokenizer pointed at another corpus (the demo's `shapes` one on handwritten digits)
turns the content words into its unknown token: the run trains on captions that say nothing, with
no error anywhere. Measured on a sample at start-up: a warning above WARN_RATE, a ConfigError above
`data.max_unknown_token_rate`.
"""

from data.errors import ConfigError
from data.tokenizer import Tokenizer, sample_captions, unknown_rate

WARN_RATE = 0.02
ADVICE = ('train one on these captions (python -m data.tokenizer train --data SPEC --vocab_size '
          'N --out PATH, then --config.data.tokenizer=sentencepiece:PATH) or use bytes')


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

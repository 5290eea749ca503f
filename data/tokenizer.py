"""Tokenizers named by a spec string, all producing int32 [N, context] with 0 as padding.

Specs: `bytes` (UTF-8 bytes, no vocabulary file), `hf:PATH` (a `tokenizer.json` of the `tokenizers`
library), `sentencepiece:PATH` (a `.model` file), `clip_bpe:PATH` (CLIP's BPE merges file,
`bpe_simple_vocab_16e6.txt.gz`, as OpenCLIP tokenizes), `shapes` (word-level vocabulary of the embedded
corpus, built in code). Every encoding ends with the end-of-text id; truncation keeps it. Vocabularies
with a start-of-text token (CLIP's) also begin with it.
A run copies its tokenizer into its workdir so eval jobs rebuild exactly the same one.
"""

import os
import re

import numpy as np

from data import clip_bpe, storage
from data.errors import ConfigError

PAD_ID = 0
TOKENIZER_KINDS = ('bytes', 'hf', 'sentencepiece', 'clip_bpe', 'shapes')
_SPACES = re.compile(r'\s+')


def clean_text(text: str, lowercase: bool) -> str:
  """Collapses whitespace and strips; lower-cases when asked."""
  text = _SPACES.sub(' ', text).strip()
  return text.lower() if lowercase else text


class Tokenizer:
  """Base: subclasses give `vocab_size`, `eos_id` and `_ids(text) -> list[int]`."""

  vocab_size: int
  eos_id: int
  bos_id: int | None = None  # Prepended when set (CLIP's start-of-text).

  def __init__(self, lowercase: bool = False):
    self.lowercase = lowercase

  def _ids(self, text: str) -> list[int]:
    raise NotImplementedError

  def encode(self, texts: list[str], length: int) -> np.ndarray:
    """int32 [len(texts), length]: [start-of-text,] ids, end-of-text, then zero padding."""
    out = np.full((len(texts), length), PAD_ID, np.int32)
    start = [] if self.bos_id is None else [self.bos_id]
    for row, text in enumerate(texts):
      ids = self._ids(clean_text(text, self.lowercase))[:length - 1 - len(start)]
      ids = start + ids + [self.eos_id]
      out[row, :len(ids)] = ids
    return out


class BytesTokenizer(Tokenizer):
  """UTF-8 bytes shifted by 3: 0 = padding, 1 = unknown (unused), 2 = end-of-text."""

  vocab_size = 256 + 3
  eos_id = 2

  def _ids(self, text: str) -> list[int]:
    return [b + 3 for b in text.encode('utf-8')]


class HFTokenizer(Tokenizer):
  """A `tokenizer.json` read by the `tokenizers` library (special tokens added by us, not it)."""

  EOS_NAMES = ('[EOS]', '<|endoftext|>', '[SEP]', '</s>')
  BOS_NAMES = ('<|startoftext|>',)  # Only CLIP's: BERT's [CLS] is the model's own cls token.

  def __init__(self, path: str | None, lowercase: bool = False, json_text: str | None = None):
    super().__init__(lowercase)
    import tokenizers  # Lazy: only runs that use it pay the import.
    self.path = path
    # Read through storage, so the file may be in a bucket.
    self._tok = tokenizers.Tokenizer.from_str(
        json_text if json_text is not None else storage.read_text(path))
    # Files saved by transformers may carry padding/truncation settings; encode() does both itself.
    self._tok.no_padding()
    self._tok.no_truncation()
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    eos = [self._tok.token_to_id(name) for name in self.EOS_NAMES]
    eos = [i for i in eos if i is not None]
    if not eos:
      raise ConfigError(f'tokenizer {path} has no end-of-text token (one of {self.EOS_NAMES})')
    self.eos_id = eos[0]
    bos = [i for i in (self._tok.token_to_id(name) for name in self.BOS_NAMES) if i is not None]
    self.bos_id = bos[0] if bos else None

  def _ids(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids


class ClipBpeTokenizer(HFTokenizer):
  """CLIP's BPE (`clip_bpe.clip_bpe_json`), with CLIP's HTML unescaping before it."""

  def _ids(self, text: str) -> list[int]:
    return super()._ids(clip_bpe.unescape_html(text))


class SentencePieceTokenizer(Tokenizer):
  """A sentencepiece model; its `eos` piece ends every text, id 0 must be padding/unknown."""

  def __init__(self, path: str, lowercase: bool = False):
    super().__init__(lowercase)
    import sentencepiece
    self.path = path
    self._sp = sentencepiece.SentencePieceProcessor(model_proto=storage.read_bytes(path))
    self.vocab_size = self._sp.get_piece_size()
    self.eos_id = self._sp.eos_id()
    if self.eos_id < 0:
      raise ConfigError(f'sentencepiece model {path} has no eos piece')

  def _ids(self, text: str) -> list[int]:
    return self._sp.encode(text)


def shapes_tokenizer_json() -> str:
  """The word-level tokenizer of the embedded corpus, as `tokenizer.json` text."""
  import tokenizers
  from tokenizers import models, normalizers, pre_tokenizers

  from data import shapes
  vocab = {'[PAD]': 0, '[UNK]': 1, '[EOS]': 2}
  for word in shapes.vocabulary():
    vocab[word] = len(vocab)
  tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token='[UNK]'))
  tok.normalizer = normalizers.Lowercase()
  tok.pre_tokenizer = pre_tokenizers.Sequence(
      [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
  return tok.to_str()


def bytes_tokenizer_json() -> str:
  """`BytesTokenizer` as `tokenizer.json` text (for libraries): each UTF-8 byte is one symbol."""
  import tokenizers
  from tokenizers import decoders, models, pre_tokenizers

  from data import clip_bpe
  vocab = {'[PAD]': 0, '[UNK]': 1, '[EOS]': 2}
  vocab.update({symbol: byte + 3 for byte, symbol in enumerate(clip_bpe.byte_symbols_by_byte())})
  # No merges: a text's byte symbols map one to one onto ids.
  tok = tokenizers.Tokenizer(models.BPE(vocab, [], unk_token='[UNK]'))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tok.decoder = decoders.ByteLevel()
  return tok.to_str()


def sentencepiece_tokenizer_json(path: str) -> str:
  """A unigram sentencepiece model as `tokenizer.json` text (for libraries), as transformers
  converts one: its normalisation table, extra spaces removed, '▁' word boundaries."""
  import tokenizers
  from sentencepiece import sentencepiece_model_pb2
  from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers
  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString(storage.read_bytes(path))
  if proto.trainer_spec.model_type != 1:  # 1 = unigram; data.tokenizer train makes only those.
    raise ConfigError(f'{path}: only unigram sentencepiece models convert to tokenizer.json')
  tok = tokenizers.Tokenizer(models.Unigram([(p.piece, p.score) for p in proto.pieces],
                                            proto.trainer_spec.unk_id,
                                            proto.trainer_spec.byte_fallback))
  steps = []
  if proto.normalizer_spec.precompiled_charsmap:
    steps.append(normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap))
  if proto.normalizer_spec.remove_extra_whitespaces:
    steps += [normalizers.Replace(Regex(' {2,}'), ' '), normalizers.Strip()]
  tok.normalizer = normalizers.Sequence(steps)
  scheme = 'always' if proto.normalizer_spec.add_dummy_prefix else 'never'
  tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement='▁', prepend_scheme=scheme)
  tok.decoder = decoders.Metaspace(replacement='▁', prepend_scheme=scheme)
  return tok.to_str()


def _split_spec(spec: str) -> tuple[str, str]:
  kind, _, path = spec.partition(':')
  if kind not in TOKENIZER_KINDS:
    raise ConfigError(f'unknown tokenizer {spec!r}; expected one of '
                      'bytes, shapes, hf:PATH, sentencepiece:PATH, clip_bpe:PATH')
  if kind in ('hf', 'sentencepiece', 'clip_bpe'):
    if not path:
      raise ConfigError(f'tokenizer {spec!r} needs a path: {kind}:PATH')
    if not storage.is_file(path):
      raise ConfigError(f'tokenizer file {path} does not exist')
  return kind, path


def get_tokenizer(spec: str, lowercase: bool = False) -> Tokenizer:
  """The tokenizer a spec names."""
  kind, path = _split_spec(spec)
  if kind == 'bytes':
    return BytesTokenizer(lowercase)
  if kind == 'sentencepiece':
    return SentencePieceTokenizer(path, lowercase)
  if kind == 'shapes':
    return HFTokenizer(None, lowercase, json_text=shapes_tokenizer_json())
  if kind == 'clip_bpe':  # The merges file, or the tokenizer.json a run built from it.
    if path.endswith('.json'):
      return ClipBpeTokenizer(path, lowercase)
    return ClipBpeTokenizer(path, lowercase, json_text=clip_bpe.clip_bpe_json(path))
  return HFTokenizer(path, lowercase)


def _workdir_file(kind: str) -> str:
  """The file a run keeps its tokenizer in."""
  return 'tokenizer.model' if kind == 'sentencepiece' else 'tokenizer.json'


def save_to_workdir(spec: str, workdir: str) -> str:
  """Copies the tokenizer's file into `workdir`; returns the file name ('' for `bytes`)."""
  kind, path = _split_spec(spec)
  if kind == 'bytes':
    return ''
  name = _workdir_file(kind)
  target = storage.join(workdir, name)
  if kind == 'shapes' or (kind == 'clip_bpe' and not path.endswith('.json')):
    # Built in code: the workdir keeps the built tokenizer.json.
    storage.write_text(target, shapes_tokenizer_json() if kind == 'shapes'
                       else clip_bpe.clip_bpe_json(path))
  elif storage.absolute(path) != storage.absolute(target):
    storage.write_bytes(target, storage.read_bytes(path))
  return name


# The kind that reads a run's saved file: built-in vocabularies are saved as plain tokenizer.json.
_SAVED_KIND = {'shapes': 'hf', 'hf': 'hf', 'clip_bpe': 'clip_bpe', 'sentencepiece': 'sentencepiece'}


def workdir_spec(spec: str, workdir: str) -> str:
  """The spec of the tokenizer a run with tokenizer `spec` saved in `workdir`."""
  kind = spec.partition(':')[0]
  if kind == 'bytes':
    return 'bytes'
  return f'{_SAVED_KIND[kind]}:{storage.join(workdir, _workdir_file(kind))}'


def load_from_workdir(spec: str, workdir: str, lowercase: bool = False) -> Tokenizer:
  """The tokenizer a run saved in its workdir (the spec is the run's config value)."""
  saved = workdir_spec(spec, workdir)
  path = saved.partition(':')[2]
  if path and not storage.is_file(path):
    raise ConfigError(f'{workdir} has no {storage.basename(path)}: is it the workdir of a '
                      'training run?')
  return get_tokenizer(saved, lowercase)


def train_sentencepiece(captions, vocab_size: int, out: str, lowercase: bool = True) -> None:
  """Trains a unigram sentencepiece model with ids 0 = padding, 1 = unknown, 2 = end-of-text."""
  import sentencepiece
  import tempfile
  texts = (clean_text(c, lowercase) for c in captions)
  with tempfile.TemporaryDirectory() as tmp:
    prefix = os.path.join(tmp, 'sp')
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=texts, model_prefix=prefix, vocab_size=vocab_size,
        model_type='unigram', character_coverage=1.0, pad_id=0, unk_id=1, eos_id=2, bos_id=-1,
        hard_vocab_limit=False, minloglevel=2)
    with open(prefix + '.model', 'rb') as f:  # a local temporary file
      storage.write_bytes(out, f.read())


def source_captions(spec: str):
  """Every readable caption of a data source (bad records are skipped with a warning)."""
  import sys

  from data.records import BadRecord
  from data.sources import open_source
  source = open_source(spec)
  for i in range(len(source)):
    try:
      yield from source.text(i)
    except BadRecord as e:
      print(f'warning: skipping {e}', file=sys.stderr)


# Names HF tokenizers give their unknown token; captions sampled to measure its rate.
UNKNOWN_NAMES = ('[UNK]', '<unk>', '<|unk|>')
SAMPLE = 256


def unknown_id(tokenizer: Tokenizer) -> int | None:
  """The id the tokenizer gives text it cannot represent; None when it has none (bytes, BPE)."""
  if isinstance(tokenizer, SentencePieceTokenizer):
    unk = tokenizer._sp.unk_id()
    return unk if unk >= 0 else None
  if isinstance(tokenizer, HFTokenizer):
    ids = [tokenizer._tok.token_to_id(name) for name in UNKNOWN_NAMES]
    return next((i for i in ids if i is not None), None)
  return None


def sample_captions(source, count: int = SAMPLE) -> list[str]:
  """Captions of up to `count` records spread evenly over the source (bad records left out)."""
  from data.records import BadRecord
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
    ids = tokenizer._ids(clean_text(caption, tokenizer.lowercase))
    total += len(ids)
    unknown += sum(1 for i in ids if i == unk)
  return unknown / total if total else 0.0


def main(argv: list[str]) -> int:
  """`python -m data.tokenizer train --data SPEC --vocab_size N --out PATH`."""
  import argparse
  import sys
  parser = argparse.ArgumentParser(prog='python -m data.tokenizer')
  commands = parser.add_subparsers(dest='command', required=True)
  train = commands.add_parser('train', help='train a sentencepiece model on a source\'s captions')
  train.add_argument('--data', required=True, help='data spec, e.g. csv:/data/train.csv')
  train.add_argument('--vocab_size', type=int, required=True)
  train.add_argument('--out', required=True, help='output .model file')
  train.add_argument('--no_lowercase', action='store_true')
  args = parser.parse_args(argv)
  try:
    train_sentencepiece(source_captions(args.data), args.vocab_size, args.out,
                        lowercase=not args.no_lowercase)
  except ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  tok = SentencePieceTokenizer(args.out, lowercase=not args.no_lowercase)
  from data.sources import open_source
  rate = unknown_rate(tok, sample_captions(open_source(args.data)))
  print(f'wrote {args.out}: {tok.vocab_size} pieces, {rate:.2%} unknown tokens on a sample of the '
        f'captions; use --config.data.tokenizer=sentencepiece:{args.out}')
  return 0


if __name__ == '__main__':
  import sys
  sys.exit(main(sys.argv[1:]))

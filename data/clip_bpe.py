"""CLIP's byte-level BPE (OpenAI/OpenCLIP `bpe_simple_vocab_16e6.txt.gz`) as a `tokenizers` model.

The merges file ships inside the open_clip_torch package (open_clip/bpe_simple_vocab_16e6.txt.gz);
the user gives its path (`clip_bpe:PATH`), nothing is downloaded. The vocabulary is built the way
CLIP builds it — 256 byte symbols, the same with the end-of-word mark `</w>`, one entry per merge,
then start- and end-of-text — so ids equal OpenCLIP's (49406 start, 49407 end). The result is an
ordinary `tokenizer.json`, which a run copies into its workdir.
"""

import functools
import gzip
import html

from data import storage

NUM_MERGES = 49152 - 256 - 2  # CLIP uses the first 48,894 merges of the file.
START, END = '<|startoftext|>', '<|endoftext|>'
# CLIP's word pattern: contractions, letter runs, single digits, runs of other non-space symbols.
WORD_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def byte_symbols() -> list[str]:
  """The printable stand-in of each byte 0..255, in CLIP's vocabulary order."""
  printable = (list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1))
               + list(range(ord('®'), ord('ÿ') + 1)))
  order, chars = printable[:], printable[:]
  for byte in range(256):
    if byte not in printable:
      order.append(byte)
      chars.append(256 + len(order) - len(printable) - 1)
  return [chr(c) for c in chars]


def byte_symbols_by_byte() -> list[str]:
  """The printable stand-in of byte b at index b (the byte-level pre-tokenizer's mapping)."""
  printable = (list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1))
               + list(range(ord('®'), ord('ÿ') + 1)))
  order = printable + [b for b in range(256) if b not in printable]
  by_byte = [''] * 256
  for byte, symbol in zip(order, byte_symbols()):
    by_byte[byte] = symbol
  return by_byte


def read_merges(path: str) -> list[tuple[str, str]]:
  """The merge pairs CLIP uses from a `bpe_simple_vocab_16e6.txt.gz` file."""
  lines = gzip.decompress(storage.read_bytes(path)).decode('utf-8').split('\n')[1:NUM_MERGES + 1]
  return [tuple(line.split()) for line in lines]


@functools.lru_cache(maxsize=4)  # A run builds it to tokenize and again to save it in its workdir.
def clip_bpe_json(path: str) -> str:
  """`tokenizer.json` text of CLIP's tokenizer built from the merges file at `path`."""
  from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
  merges = read_merges(path)
  symbols = byte_symbols()
  vocab = symbols + [s + '</w>' for s in symbols] + [a + b for a, b in merges] + [START, END]
  bpe = models.BPE({token: i for i, token in enumerate(vocab)}, merges,
                   end_of_word_suffix='</w>', continuing_subword_prefix='', fuse_unk=False)
  tok = Tokenizer(bpe)
  tok.add_special_tokens([START, END])
  # NFC is ftfy.fix_text's normalisation; whitespace runs -> one space; CLIP lower-cases.
  tok.normalizer = normalizers.Sequence(
      [normalizers.NFC(), normalizers.Replace(Regex(r'\s+'), ' '), normalizers.Lowercase()])
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(WORD_PATTERN), behavior='removed', invert=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  return tok.to_str()


def unescape_html(text: str) -> str:
  """CLIP's cleaning step that a tokenizer.json cannot express: HTML entities, twice unescaped."""
  return html.unescape(html.unescape(text)).strip()

"""The run's tokenizer as OpenCLIP and transformers load it from an export folder.

Our tokenizers add start/end-of-text themselves and pad with id 0; a library adds them through the
tokenizer's post-processor and pads with its pad token. So the exported `tokenizer.json` carries a
post-processor (`[start] $A end`), and `tokenizer_config.json` names the special tokens for
transformers' AutoTokenizer (the tokenizer.json is used as written: `PreTrainedTokenizerFast`).
OpenCLIP's `get_tokenizer('local-dir:FOLDER')` loads that same tokenizer when `text_cfg` names an
HF tokenizer (`hf_tokenizer_name`); `tokenizer_kwargs.clean` picks its text cleaning.
Padding: the vocabulary's own pad token where id 0 is one; else (CLIP's BPE, whose id 0 is '!')
the end-of-text token, as CLIP does. Tokens after end-of-text do not change a causal text tower's
pooled embedding, so the embeddings are ours either way.
Text cleaning the libraries do in Python (not in tokenizer.json) differs in one respect: OpenCLIP
always un-escapes HTML entities ('&amp;') and applies ftfy, transformers never does; ours does both
only for CLIP's BPE. Captions holding entities (or mojibake) may get other ids there.
"""

import json

from data import storage
from data.errors import ConfigError
from data.tokenizer import (PAD_ID, Tokenizer, bytes_tokenizer_json, sentencepiece_tokenizer_json,
                            shapes_tokenizer_json)

PAD_NAMES = ('[PAD]', '<pad>', '<|pad|>')
TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json')


def run_tokenizer_json(spec: str, workdir: str) -> str:
  """The run's tokenizer as `tokenizer.json` text (built for bytes and sentencepiece runs)."""
  kind = spec.partition(':')[0]
  if kind == 'bytes':
    return bytes_tokenizer_json()
  if kind == 'sentencepiece':
    return sentencepiece_tokenizer_json(storage.join(workdir, 'tokenizer.model'))
  path = storage.join(workdir, 'tokenizer.json')
  if storage.is_file(path):
    return storage.read_text(path)
  if kind == 'shapes':  # Workdirs written before the tokenizer was saved in them.
    return shapes_tokenizer_json()
  raise ConfigError(f'{workdir} has no tokenizer.json for its tokenizer {spec!r}')


def swap_ids(tok: dict, a: int, b: int) -> dict:
  """The tokenizer JSON with token ids `a` and `b` exchanged (vocabulary and added tokens)."""
  swap = {a: b, b: a}
  model = tok['model']
  if isinstance(model.get('vocab'), dict):  # WordLevel, BPE, WordPiece: token -> id
    model['vocab'] = {token: swap.get(i, i) for token, i in model['vocab'].items()}
  elif isinstance(model.get('vocab'), list):  # Unigram: [piece, score] at position id
    model['vocab'][a], model['vocab'][b] = model['vocab'][b], model['vocab'][a]
    if model.get('unk_id') is not None:
      model['unk_id'] = swap.get(model['unk_id'], model['unk_id'])
  else:
    raise ConfigError(f'cannot renumber a {model.get("type")} tokenizer.json vocabulary')
  for added in tok.get('added_tokens') or []:
    added['id'] = swap.get(added['id'], added['id'])
  return tok


def _token(tok, token_id: int) -> str:
  token = tok.id_to_token(token_id)
  if token is None:
    raise ConfigError(f'the tokenizer has no token of id {token_id}')
  return token


def library_tokenizer(json_text: str, tokenizer: Tokenizer, lowercase: bool,
                      swap: tuple[int, int] | None = None) -> tuple[str, dict]:
  """(tokenizer.json text, tokenizer_config.json contents) that make the library's ids ours.

  `swap` exchanges two ids (HF cannot pool at an end-of-text id 2; the exporter moves it)."""
  import tokenizers
  from tokenizers import Regex, normalizers, processors
  data = json.loads(json_text)
  if swap:
    data = swap_ids(data, *swap)
  tok = tokenizers.Tokenizer.from_str(json.dumps(data))
  remap = (lambda i: {swap[0]: swap[1], swap[1]: swap[0]}.get(i, i)) if swap else (lambda i: i)
  eos_id = remap(tokenizer.eos_id)
  bos_id = None if tokenizer.bos_id is None else remap(tokenizer.bos_id)
  eos, bos = _token(tok, eos_id), None if bos_id is None else _token(tok, bos_id)
  # Ours collapses whitespace runs and strips, then lower-cases (data.tokenizer.clean_text), in
  # Python before the tokenizer; the export does both first in its normalizer (transformers has
  # no Python-side cleaning; OpenCLIP's is the same, so idempotent).
  steps = [normalizers.Replace(Regex(r'\s+'), ' '), normalizers.Strip()]
  if lowercase and 'Lowercase' not in json.dumps(data.get('normalizer')):
    steps.append(normalizers.Lowercase())
  tok.normalizer = normalizers.Sequence(steps + ([tok.normalizer] if tok.normalizer else []))
  specials = [(eos, eos_id)] if bos is None else [(bos, bos_id), (eos, eos_id)]
  tok.add_special_tokens([name for name, _ in specials])
  start = '' if bos is None else f'{bos} '
  tok.post_processor = processors.TemplateProcessing(
      single=f'{start}$A {eos}', pair=f'{start}$A {eos} $B:1 {eos}:1', special_tokens=specials)
  tok.no_padding()
  tok.no_truncation()
  pad = tok.id_to_token(remap(PAD_ID))
  config = dict(tokenizer_class='PreTrainedTokenizerFast', eos_token=eos,
                pad_token=pad if pad in PAD_NAMES else eos, clean_up_tokenization_spaces=False)
  if bos is not None:
    config['bos_token'] = bos
  return tok.to_str(), config


def openclip_text_cfg(spec: str, folder: str) -> dict:
  """`text_cfg` keys that make OpenCLIP's get_tokenizer load the exported tokenizer: its
  'local-dir:' loader reads the folder it is given; a model config added by name reads this path."""
  # CLIP's BPE: OpenCLIP's 'lower' cleaning (ftfy, HTML unescaped twice) is what ours does; others
  # only collapse whitespace (lower-casing is in the tokenizer's normalizer).
  clean = 'lower' if spec.startswith('clip_bpe:') else 'whitespace'
  return dict(hf_tokenizer_name=storage.absolute(folder), tokenizer_kwargs=dict(clean=clean))


def write_tokenizer(folder: str, json_text: str, config: dict, context_length: int) -> None:
  """tokenizer.json, tokenizer_config.json and special_tokens_map.json into `folder` (local or
  gs:// / s3://)."""
  config = dict(config, model_max_length=context_length)
  special = {k: v for k, v in config.items() if k.endswith('_token')}
  contents = (json_text, json.dumps(config, indent=2), json.dumps(special, indent=2))
  for name, content in zip(TOKENIZER_FILES, contents):
    storage.write_text(storage.join(folder, name), content)


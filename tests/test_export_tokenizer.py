"""Exports a library can use as written: the tokenizer files OpenCLIP's get_tokenizer('local-dir:')
and transformers' AutoTokenizer load give our ids (checked here with the `tokenizers` library on the
exported files; with the libraries themselves by tests/data/make_interop_refs.py check-export), the
end-of-text id 2 of the built-in tokenizers exported to HF, and file modes."""

import json
import os

import numpy as np
import pytest

from data.tokenizer import get_tokenizer
from pretrain import import_weights
from pretrain.export_weights import export_weights
from pretrain.interop.common import read_safetensors
from tests import interop_probe

TOLERANCE = 1e-5


def library_ids(folder, captions: list[str], context: int, clean) -> np.ndarray:
  """What a library's tokenizer loaded from an export folder gives: the exported tokenizer.json
  (special tokens from its post-processor), padded with tokenizer_config.json's pad token and
  truncated as transformers does; `clean` is the library's Python-side text cleaning."""
  import tokenizers
  tok = tokenizers.Tokenizer.from_file(str(folder / 'tokenizer.json'))
  settings = json.load(open(folder / 'tokenizer_config.json'))
  assert settings['tokenizer_class'] == 'PreTrainedTokenizerFast'  # tokenizer.json used as is
  assert settings['model_max_length'] == context
  tok.enable_truncation(context)
  tok.enable_padding(length=context, pad_id=tok.token_to_id(settings['pad_token']),
                     pad_token=settings['pad_token'])
  return np.array([e.ids for e in tok.encode_batch([clean(c) for c in captions])])


def assert_same_ids_to_end_of_text(theirs: np.ndarray, ours: np.ndarray) -> None:
  """Equal up to each row's end-of-text; after it ours is 0, theirs the library's pad token."""
  for row_theirs, row_ours in zip(theirs, ours):
    n = int((row_ours != 0).sum())
    assert row_theirs[:n].tolist() == row_ours[:n].tolist()


def openclip_clean(text: str) -> str:
  """OpenCLIP's 'whitespace' cleaning (its ftfy/HTML steps change none of CAPTIONS)."""
  return ' '.join(text.split())


CAPTIONS = ['a red square on a blue circle', 'A  Small\tGREEN triangle.', '', 'circle ' * 40,
            'café naïve ω 日本']


@pytest.fixture(scope='module')
def demo_exports(tmp_path_factory):
  """The interop probe (CLIP's BPE); the demo's model and `shapes` tokenizer (end-of-text id 2);
  `bytes` and `sentencepiece` runs (tokenizers without a tokenizer.json of their own), exported."""
  from data.tokenizer import train_sentencepiece
  out = tmp_path_factory.mktemp('demo')
  train_sentencepiece(interop_probe.SP_CAPTIONS, 60, str(out / 'sp.model'))
  runs = {}
  for name, tokenizer in (('probe', None), ('demo', 'shapes'), ('bytes', 'bytes'),
                          ('sentencepiece', f'sentencepiece:{out / "sp.model"}')):
    config = interop_probe.probe_config() if name == 'probe' else interop_probe.demo_config(tokenizer)
    config, params = interop_probe.make_probe_workdir(str(out / name / 'workdir'), config=config)
    for target in ('openclip', 'hf'):
      export_weights(str(out / name / 'workdir'), None, target, str(out / name / target))
    runs[name] = dict(config=config, params=params, folder=out / name)
  return runs


@pytest.mark.parametrize('run', ['probe', 'demo', 'bytes', 'sentencepiece'])
def test_openclip_export_names_a_tokenizer_that_gives_our_ids(run, demo_exports):
  folder, config = demo_exports[run]['folder'] / 'openclip', demo_exports[run]['config']
  text_cfg = json.load(open(folder / 'open_clip_config.json'))['model_cfg']['text_cfg']
  # get_tokenizer('local-dir:F') loads F's HF tokenizer exactly when text_cfg names one (else
  # CLIP's own BPE, whose ids index past a small vocabulary: IndexError in encode_text).
  assert text_cfg['hf_tokenizer_name'] and text_cfg['context_length'] == config.model.context_length
  clip = run == 'probe'
  assert text_cfg['tokenizer_kwargs'] == {'clean': 'lower' if clip else 'whitespace'}
  ours = get_tokenizer(config.data.tokenizer, config.data.lowercase).encode(
      CAPTIONS, config.model.context_length)
  clean = (lambda t: openclip_clean(t).lower()) if clip else openclip_clean
  assert_same_ids_to_end_of_text(
      library_ids(folder, CAPTIONS, config.model.context_length, clean), ours)


@pytest.mark.parametrize('name', ['demo', 'bytes', 'sentencepiece'])
def test_the_demo_exports_to_hf_with_end_of_text_id_2_moved(name, demo_exports, tmp_path):
  run = demo_exports[name]
  folder, config = run['folder'] / 'hf', run['config']
  ours_tok = get_tokenizer(config.data.tokenizer, lowercase=True)
  assert ours_tok.eos_id == 2  # HF would pool this model at the highest id instead.
  last = ours_tok.vocab_size - 1
  arch = json.load(open(folder / 'config.json'))
  assert arch['text_config']['eos_token_id'] == last
  # The model's rows 2 and `last` are exchanged, and the tokenizer's ids with them.
  rows = read_safetensors(str(folder / 'model.safetensors'))[
      'text_model.embeddings.token_embedding.weight']
  table = np.asarray(run['params']['txt']['token_embed']['embedding'])
  np.testing.assert_array_equal(rows[[2, last]], table[[last, 2]])
  np.testing.assert_array_equal(np.delete(rows, [2, last], 0), np.delete(table, [2, last], 0))
  context = config.model.context_length
  theirs = library_ids(folder, CAPTIONS, context, lambda t: t)
  swapped = ours_tok.encode(CAPTIONS, context)
  swapped = np.where(swapped == 2, -1, swapped)
  swapped = np.where(swapped == last, 2, swapped)
  assert_same_ids_to_end_of_text(theirs, np.where(swapped == -1, last, swapped))
  # What HF computes on its own ids is what we compute on ours (read back through the importer:
  # the same model and tokenizer files, pooling at HF's eos_token_id).
  import_weights.import_weights('hf', str(folder / 'model.safetensors'), str(folder / 'config.json'),
                                str(tmp_path / 'back'))
  images, tokens = interop_probe.probe_inputs(config)
  ours = interop_probe.embeddings(config, run['params'], images, tokens)
  back = interop_probe.workdir_outputs(
      str(tmp_path / 'back'), images, library_ids(folder, interop_probe.CAPTIONS, context,
                                                  lambda t: t))
  for key, value in ours.items():
    assert np.max(np.abs(back[key] - value)) <= TOLERANCE, key


def test_exported_files_are_world_readable(demo_exports, tmp_path):
  umask = os.umask(0o022)
  try:
    for target in ('openclip', 'hf'):
      export_weights(str(demo_exports['probe']['folder'] / 'workdir'), None, target,
                     str(tmp_path / target))
      modes = {name: oct(os.stat(tmp_path / target / name).st_mode & 0o777)
               for name in os.listdir(tmp_path / target)}
      assert set(modes.values()) == {'0o644'}, modes
      assert {'tokenizer.json', 'tokenizer_config.json'} <= set(modes)
  finally:
    os.umask(umask)

"""Reference files for the interop parity tests, made by the real OpenCLIP and transformers.

Runs in the optional peers environment (never in CI, which has no torch):
  python3 -m venv /tmp/peers && /tmp/peers/bin/pip install -r benchmarks/requirements-peers.txt
  /tmp/peers/bin/python tests/data/make_interop_refs.py make            # writes tests/data/interop/
  /tmp/peers/bin/python tests/data/make_interop_refs.py check-export DIR  # DIR from export_probe.py

`make` builds tiny random models in both libraries (every parameter perturbed, so no bias or
LayerNorm is trivially 0 or 1), saves their safetensors and architecture JSON, the inputs and the
libraries' embeddings and logits; and OpenCLIP's token ids for a set of captions. Deterministic:
fixed seeds, fixed inputs. `check-export` loads our exported folders with each library and compares
its embeddings with ours.
"""

import json
import os
import shutil
import sys

import numpy as np
import torch

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'interop')
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VOCAB, CONTEXT, IMAGE = 400, 12, 32
# `make-full DIR`: the same cases at the published sizes (OpenCLIP ViT-B-32-quickgelu, HF's default
# CLIPConfig = ViT-B/32), ~600 MB each, not committed; check with `python -m tests.interop_probe
# check-refs DIR`.
FULL = dict(vocab=49408, context=77, image=224)

CAPTIONS = [
    'a photo of a cat.', 'A Photo Of A DOG!', 'hello!!! world?!', "it's what we've done, isn't it",
    'two  spaces\tand\na newline', 'fish &amp; chips &lt;3', '&amp;amp; twice escaped',
    'numbers 1234567 and 3.14159', 'café naïve résumé Ωmega', '日本語のテキスト', 'emoji 🐱🚀 here',
    'don\'t STOP-believing...', 'under_score and hy-phen', '', '   ', '!', 'a' * 40,
    'the quick brown fox jumps over the lazy dog ' * 12,
]


def perturb_(model: torch.nn.Module, seed: int) -> None:
  """Adds noise to every parameter so that every tensor's mapping shows in the outputs."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for param in model.parameters():
      param.add_(0.05 * torch.randn(param.shape, generator=gen))


def images_and_pixels(seed: int):
  """uint8 NHWC images (our input) and the CLIP-normalised NCHW floats the libraries take."""
  images = np.random.default_rng(seed).integers(0, 256, (3, IMAGE, IMAGE, 3), dtype=np.uint8)
  return images, to_pixels(images, CLIP_MEAN, CLIP_STD)


def to_pixels(images: np.ndarray, mean, std) -> torch.Tensor:
  """uint8 NHWC -> normalised fp32 NCHW, as our towers normalise on device."""
  x = (images.astype(np.float32) / 255.0 - np.float32(mean)) / np.float32(std)
  return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def token_rows(seed: int, eot: int, low: int, high: int, pad: int, zero_inside: bool) -> np.ndarray:
  """Random captions of different lengths ending in `eot`, padded with `pad`."""
  rng = np.random.default_rng(seed)
  rows = np.full((4, CONTEXT), pad, np.int64)
  for row, length in enumerate((3, 7, CONTEXT - 1, 1)):
    ids = rng.integers(low, high, length)
    if zero_inside and length > 2:
      ids[1] = 0  # CLIP's BPE id 0 is '!': a real token, not padding.
    rows[row, :length] = ids
    rows[row, length] = eot
  return rows


def save_case(name: str, arch: dict, state: dict, images, tokens, img, txt, logits) -> None:
  from safetensors.torch import save_file
  folder = os.path.join(HERE, name)
  os.makedirs(folder, exist_ok=True)
  save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(folder, 'model.safetensors'))
  with open(os.path.join(folder, 'arch.json'), 'w') as f:
    json.dump(arch, f, indent=1, sort_keys=True)
  np.savez(os.path.join(folder, 'io.npz'), images=images, tokens=tokens.astype(np.int32),
           image_emb=img.numpy(), text_emb=txt.numpy(), logits=logits.numpy())


def openclip_case(name: str, seed: int, quick_gelu: bool, text_extra: dict, vision_extra: dict,
                  eot: int, low: int, high: int, arch: dict | None = None) -> None:
  import open_clip
  torch.manual_seed(seed)
  arch = arch or dict(
      embed_dim=24, quick_gelu=quick_gelu,
      vision_cfg=dict(image_size=IMAGE, layers=2, width=48, patch_size=8, head_width=24,
                      **vision_extra),
      text_cfg=dict(context_length=CONTEXT, vocab_size=VOCAB, width=32, heads=2, layers=2,
                    **text_extra))
  model = open_clip.CLIP(**arch).eval()
  perturb_(model, seed)
  images, pixels = images_and_pixels(seed)
  tokens = token_rows(seed, eot, low, high, pad=0, zero_inside=True)
  with torch.no_grad():
    img = model.encode_image(pixels, normalize=True)
    txt = model.encode_text(torch.from_numpy(tokens), normalize=True)
    logits = model.logit_scale.exp() * img @ txt.T
  save_case(name, arch, model.state_dict(), images, tokens, img, txt, logits)


def hf_case(name: str, seed: int, act: str, eos: int, low: int, high: int, eot: int,
            full: bool = False) -> None:
  import transformers
  torch.manual_seed(seed)
  if full:  # transformers' defaults: ViT-B/32, QuickGELU, eos 49407.
    config = transformers.CLIPConfig()
  else:
    text = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=CONTEXT, hidden_act=act,
                eos_token_id=eos, bos_token_id=eos, pad_token_id=eos)
    vision = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=2, image_size=IMAGE, patch_size=8, hidden_act=act)
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)
  model = transformers.CLIPModel(config).eval()
  perturb_(model, seed)
  images, pixels = images_and_pixels(seed)
  tokens = token_rows(seed, eot, low, high, pad=eot, zero_inside=False)  # HF pads with end-of-text
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(tokens), pixel_values=pixels)
  folder = os.path.join(HERE, name)
  os.makedirs(folder, exist_ok=True)
  model.save_pretrained(folder, safe_serialization=True)
  os.replace(os.path.join(folder, 'config.json'), os.path.join(folder, 'arch.json'))
  with open(os.path.join(folder, 'arch.json')) as f:
    arch = json.load(f)
  from safetensors.torch import load_file
  state = load_file(os.path.join(folder, 'model.safetensors'))
  save_case(name, arch, state, images, tokens, out.image_embeds, out.text_embeds,
            out.logits_per_image)


def hf_clip_tokenizer(simple):
  """transformers' CLIPTokenizer over the same vocabulary and merges (what HF CLIP repos ship)."""
  import transformers
  rename = {'<start_of_text>': '<|startoftext|>', '<end_of_text>': '<|endoftext|>'}
  vocab = {rename.get(token, token): i for token, i in simple.encoder.items()}
  merges = sorted(simple.bpe_ranks, key=simple.bpe_ranks.get)
  return transformers.CLIPTokenizer(vocab=vocab, merges=[tuple(m) for m in merges])


def tokenizer_refs() -> None:
  """OpenCLIP's ids (for clip_bpe:) and HF's ids plus its tokenizer.json, gzipped (for hf:)."""
  import gzip
  import tempfile
  import open_clip
  from open_clip.tokenizer import SimpleTokenizer, default_bpe
  shutil.copyfile(default_bpe(), os.path.join(HERE, 'bpe_simple_vocab_16e6.txt.gz'))
  tokenizer = SimpleTokenizer()
  ids = tokenizer(CAPTIONS, context_length=77).numpy()
  eot = tokenizer.eot_token_id
  hf = hf_clip_tokenizer(tokenizer)
  hf_ids = hf(CAPTIONS, padding='max_length', max_length=77, truncation=True)['input_ids']
  with tempfile.TemporaryDirectory() as tmp:
    hf.save_pretrained(tmp)
    with open(os.path.join(tmp, 'tokenizer.json'), 'rb') as src, \
        gzip.GzipFile(os.path.join(HERE, 'hf_clip_tokenizer.json.gz'), 'wb', mtime=0) as dst:
      dst.write(src.read())
  upto_eot = lambda row: row[:list(row).index(eot) + 1]
  with open(os.path.join(HERE, 'tokens.json'), 'w') as f:
    json.dump({'captions': CAPTIONS, 'context_length': 77,
               'ids': [upto_eot(row.tolist()) for row in ids],
               'hf_ids': [upto_eot(list(row)) for row in hf_ids],
               'open_clip': open_clip.__version__}, f, ensure_ascii=False, indent=0)


def make_full(folder: str) -> None:
  """Published-size cases (random, perturbed) into `folder`."""
  global HERE, VOCAB, CONTEXT, IMAGE
  import open_clip
  HERE, VOCAB, CONTEXT, IMAGE = folder, FULL['vocab'], FULL['context'], FULL['image']
  arch = json.load(open(os.path.join(os.path.dirname(open_clip.__file__), 'model_configs',
                                     'ViT-B-32-quickgelu.json')))
  openclip_case('openclip_b32_quickgelu', 5, True, {}, {}, eot=VOCAB - 1, low=1, high=VOCAB - 2,
                arch=arch)
  hf_case('hf_b32', 6, 'quick_gelu', eos=VOCAB - 1, low=1, high=VOCAB - 2, eot=VOCAB - 1, full=True)
  print(f'wrote {folder}')


def make() -> None:
  import open_clip
  import safetensors
  import transformers
  os.makedirs(HERE, exist_ok=True)
  # OpenCLIP, QuickGELU, argmax pooling (end-of-text = the highest id), ln_pre.
  openclip_case('openclip_quickgelu', 1, True, {}, {}, eot=VOCAB - 1, low=1, high=VOCAB - 1)
  # OpenCLIP, exact GELU, pooling at the first eos_id 5 (ids above it occur), no ln_pre.
  openclip_case('openclip_gelu_eos', 2, False, dict(pool_type='eos', eos_id=5),
                dict(no_ln_pre=True), eot=5, low=6, high=VOCAB)
  # HF with the legacy eos id 2 (argmax pooling), QuickGELU.
  hf_case('hf_eos2', 3, 'quick_gelu', eos=2, low=3, high=VOCAB - 1, eot=VOCAB - 1)
  # HF with eos id 7 (first occurrence pooled; larger ids occur), exact GELU.
  hf_case('hf_eos7', 4, 'gelu', eos=7, low=8, high=VOCAB, eot=7)
  tokenizer_refs()
  with open(os.path.join(HERE, 'versions.json'), 'w') as f:
    json.dump({'torch': torch.__version__, 'open_clip_torch': open_clip.__version__,
               'transformers': transformers.__version__, 'safetensors': safetensors.__version__,
               'numpy': np.__version__}, f, indent=1)
  print(f'wrote {HERE}')


def library_tokens(folder: str, captions: list[str], context: int) -> dict:
  """Token ids of `captions` from each library's own tokenizer, loaded from the export folders."""
  import open_clip
  import transformers
  out = {}
  if os.path.isdir(os.path.join(folder, 'openclip')):
    tok = open_clip.get_tokenizer(f'local-dir:{folder}/openclip')
    out['openclip'] = tok(captions)
  if os.path.isdir(os.path.join(folder, 'hf')):
    tok = transformers.AutoTokenizer.from_pretrained(os.path.join(folder, 'hf'))
    out['hf'] = tok(captions, padding='max_length', max_length=context, truncation=True,
                    return_tensors='pt').input_ids
  return out


def check_export(folder: str) -> None:
  """Loads FOLDER/openclip and/or FOLDER/hf with the libraries; compares with FOLDER/ours.npz.
  With captions in ours.npz, text embeddings are also computed from each library's own tokenizer
  loaded from the export (the way a user would), and its ids are compared with ours."""
  import open_clip
  import transformers
  ours = np.load(os.path.join(folder, 'ours.npz'))
  pixels = to_pixels(ours['images'], ours['mean'], ours['std'])
  tokens = torch.from_numpy(ours['tokens'].astype(np.int64))
  captions = [str(c) for c in ours['captions']] if 'captions' in ours else None
  theirs = library_tokens(folder, captions, tokens.shape[1]) if captions else {}
  results = {}
  with torch.no_grad():
    if os.path.isdir(os.path.join(folder, 'openclip')):
      model = open_clip.create_model(f'local-dir:{folder}/openclip').eval()
      open_clip.add_model_config(os.path.join(folder, 'openclip', 'exported.json'))
      by_file = open_clip.create_model(
          'exported', pretrained=os.path.join(folder, 'openclip', 'open_clip_model.safetensors'))
      for name, m in (('openclip (local-dir)', model), ('openclip (pretrained=FILE)', by_file)):
        img, txt = m.encode_image(pixels, normalize=True), m.encode_text(tokens, normalize=True)
        results[name] = (img, txt, m.logit_scale.exp() * img @ txt.T)
      if 'openclip' in theirs:
        txt = model.encode_text(theirs['openclip'], normalize=True)
        results['openclip (its tokenizer)'] = (img, txt, model.logit_scale.exp() * img @ txt.T)
    if os.path.isdir(os.path.join(folder, 'hf')):
      hf_model = transformers.CLIPModel.from_pretrained(os.path.join(folder, 'hf')).eval()
      # Ours' ids are the model's unless the export renumbered end-of-text id 2.
      hf_tokens = theirs.get('hf', tokens)
      out = hf_model(input_ids=hf_tokens, pixel_values=pixels)
      results['hf (its tokenizer)' if 'hf' in theirs else 'hf'] = (
          out.image_embeds, out.text_embeds, out.logits_per_image)
  report = {}
  for name, (img, txt, logits) in results.items():
    report[name] = {key: float(np.max(np.abs(value.numpy() - ours[key])))
                    for key, value in (('image_emb', img), ('text_emb', txt), ('logits', logits))}
    print(f'{name:28s} ' + '  '.join(f'{k} {v:.2e}' for k, v in report[name].items()))
  for name, ids in theirs.items():
    # Equal up to each row's end-of-text (after it: our 0 padding, or the library's pad token).
    # Rows differ where the libraries clean text differently (HTML entities, see
    # pretrain/interop/tokenizer_files.py) and, for an HF export that moved end-of-text id 2, by design.
    same = [row_theirs[:n].tolist() == row_ours[:n].tolist() for row_theirs, row_ours, n in
            zip(ids.numpy(), ours['tokens'], (ours['tokens'] != 0).sum(1))]
    report[f'{name} rows of ids equal to ours'] = f'{sum(same)}/{len(same)}'
    print(f'{name} tokenizer: rows of ids equal to ours up to end-of-text {sum(same)}/{len(same)}')
  report['versions'] = {'open_clip_torch': open_clip.__version__,
                        'transformers': transformers.__version__, 'torch': torch.__version__}
  with open(os.path.join(folder, 'check.json'), 'w') as f:
    json.dump(report, f, indent=1)


if __name__ == '__main__':
  torch.set_num_threads(1)
  if sys.argv[1:2] == ['make']:
    make()
  elif sys.argv[1:2] == ['check-export'] and len(sys.argv) == 3:
    check_export(sys.argv[2])
  elif sys.argv[1:2] == ['make-full'] and len(sys.argv) == 3:
    make_full(sys.argv[2])
  else:
    sys.exit('usage: make_interop_refs.py make | make-full DIR | check-export DIR')

"""Weights in and out: parity with the real OpenCLIP and transformers through committed references
(tests/data/make_interop_refs.py), export round trips, LiT from an imported tower."""

import json
import os

import jax
import numpy as np
import pytest

from data.tokenizer import get_tokenizer
from eval.run_model import RunModel
from pretrain import import_weights
from pretrain.runtime.checkpoint import restore_params
from data.errors import ConfigError
from pretrain.export_weights import export_weights
from pretrain.interop.common import read_safetensors
from tests import interop_probe

REFS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'interop')
CASES = {'openclip_quickgelu': 'openclip', 'openclip_gelu_eos': 'openclip', 'hf_eos2': 'hf',
         'hf_eos7': 'hf'}
TOLERANCE = 1e-5


@pytest.mark.parametrize('case', sorted(CASES))
def test_import_matches_the_library(case, tmp_path):
  # 'bytes': its 259 ids fit these tiny models' 400-row tables.
  diffs = interop_probe.import_and_compare(os.path.join(REFS, case), str(tmp_path / 'w'), 'bytes')
  assert max(diffs.values()) <= TOLERANCE, diffs
  # The tokens hold ids above the end-of-text one (eos cases) or 0 inside a text (OpenCLIP):
  # getting the pooled position wrong would move the text embeddings far more than the tolerance.


def test_clip_bpe_matches_openclip_ids():
  refs = json.load(open(os.path.join(REFS, 'tokens.json')))
  tokenizer = get_tokenizer(f'clip_bpe:{REFS}/bpe_simple_vocab_16e6.txt.gz', lowercase=True)
  ids = tokenizer.encode(refs['captions'], refs['context_length'])
  for caption, row, ref in zip(refs['captions'], ids, refs['ids']):
    assert row[:len(ref)].tolist() == ref and not row[len(ref):].any(), caption
  assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.vocab_size) == (49406, 49407, 49408)


def test_hf_tokenizer_reads_a_clip_tokenizer_json_like_transformers(tmp_path):
  import gzip
  refs = json.load(open(os.path.join(REFS, 'tokens.json')))
  path = tmp_path / 'tokenizer.json'
  path.write_bytes(gzip.open(os.path.join(REFS, 'hf_clip_tokenizer.json.gz')).read())
  tokenizer = get_tokenizer(f'hf:{path}', lowercase=True)
  assert (tokenizer.bos_id, tokenizer.eos_id) == (49406, 49407)
  ids = tokenizer.encode(refs['captions'], refs['context_length'])
  for caption, row, ref in zip(refs['captions'], ids, refs['hf_ids']):
    assert row[:len(ref)].tolist() == ref and not row[len(ref):].any(), caption
  # transformers keeps HTML entities that OpenCLIP unescapes; each tokenizer matches its own.
  assert refs['hf_ids'] != refs['ids']


def test_import_cli_writes_a_run_like_workdir(tmp_path, capsys):
  folder = os.path.join(REFS, 'hf_eos7')
  assert import_weights.main([
      '--from', 'hf', '--weights', os.path.join(folder, 'model.safetensors'), '--arch',
      os.path.join(folder, 'arch.json'), '--workdir', str(tmp_path / 'w'), '--tokenizer',
      'bytes']) == 0
  assert 'text pooling eos_id' in capsys.readouterr().out
  assert {'config.json', 'checkpoints', 'imported.json'} <= set(os.listdir(tmp_path / 'w'))
  assert json.load(open(tmp_path / 'w' / 'config.json'))['model']['text_eos_id'] == 7


def test_half_precision_safetensors_are_read_as_fp32(tmp_path):
  import jax.numpy as jnp
  from safetensors.flax import save_file
  values = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
  save_file({'bf16': jnp.asarray(values, jnp.bfloat16), 'fp16': jnp.asarray(values, jnp.float16)},
            str(tmp_path / 'half.safetensors'))
  tensors = read_safetensors(str(tmp_path / 'half.safetensors'))
  for name, dtype in (('bf16', jnp.bfloat16), ('fp16', jnp.float16)):
    assert tensors[name].dtype == np.float32
    np.testing.assert_array_equal(tensors[name], np.asarray(jnp.asarray(values, dtype), np.float32))


@pytest.mark.parametrize('name', ['model.bin', 'model.pt'])
def test_torch_pickles_are_refused_in_one_line(name, tmp_path, capsys):
  (tmp_path / name).write_bytes(b'\x80\x02not really a pickle')
  code = import_weights.main(['--from', 'hf', '--weights', str(tmp_path / name), '--arch',
                              os.path.join(REFS, 'hf_eos7', 'arch.json'), '--workdir',
                              str(tmp_path / 'w'), '--tokenizer', 'bytes'])
  err = capsys.readouterr().err.strip()
  assert code == 2 and len(err.splitlines()) == 1
  assert 'pickle' in err and 'safetensors' in err
  assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize('source', ['openclip', 'hf'])
def test_the_weights_file_kind_is_checked_before_the_architecture(source, tmp_path, capsys):
  (tmp_path / 'arch.json').write_text('{}')  # Lacks OpenCLIP's embed_dim: checked only later.
  (tmp_path / 'model.bin').write_bytes(b'\x80\x02not really a pickle')
  (tmp_path / 'zip.safetensors').write_bytes(b'PK\x03\x04 torch.save zip format')
  for name, message in (('model.bin', 'torch pickle'), ('zip.safetensors', 'torch pickle'),
                        ('missing.safetensors', 'does not exist')):
    code = import_weights.main(['--from', source, '--weights', str(tmp_path / name), '--arch',
                                str(tmp_path / 'arch.json'), '--workdir', str(tmp_path / 'w')])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
  assert not (tmp_path / 'w').exists()


# (source, architecture JSON, the field the one-line error names)
BAD_ARCHS = [
    ('openclip', {}, 'embed_dim is missing'),
    ('openclip', {'model_cfg': {}}, 'model_cfg.embed_dim is missing'),
    ('openclip', [], 'JSON object'),
    ('openclip', {'embed_dim': True}, 'embed_dim=True must be a positive integer'),
    ('openclip', {'embed_dim': 8, 'vision_cfg': []}, 'vision_cfg must be a JSON object'),
    ('openclip', {'embed_dim': 8, 'vision_cfg': {'width': '768'}}, "vision_cfg.width='768'"),
    ('openclip', {'embed_dim': 8, 'vision_cfg': {'layers': 0}}, 'vision_cfg.layers=0'),
    ('openclip', {'embed_dim': 8, 'vision_cfg': {'mlp_ratio': -1}}, 'vision_cfg.mlp_ratio=-1'),
    ('openclip', {'embed_dim': 8, 'vision_cfg': {'head_width': 100}}, 'vision_cfg.head_width=100'),
    ('openclip', {'embed_dim': 8, 'vision_cfg': {'patch_size': 15}}, 'vision_cfg.patch_size=15'),
    ('openclip', {'embed_dim': 8, 'vision_cfg': {'image_size': [224, 200]}},
     'vision_cfg.image_size=[224, 200]'),
    ('openclip', {'embed_dim': 8, 'vision_cfg': {'no_ln_pre': 'yes'}}, 'vision_cfg.no_ln_pre'),
    ('openclip', {'embed_dim': 8, 'text_cfg': {'heads': 7}}, 'text_cfg.heads=7'),
    ('openclip', {'embed_dim': 8, 'text_cfg': {'context_length': None, 'vocab_size': 0}},
     'text_cfg.vocab_size=0'),
    ('openclip', {'embed_dim': 8, 'text_cfg': {'pool_type': 'eos', 'eos_id': 50000}},
     'text_cfg.eos_id=50000'),
    ('openclip', {'embed_dim': 8, 'quick_gelu': 1}, 'quick_gelu=1'),
    ('openclip', {'model_cfg': {'embed_dim': 8}, 'preprocess_cfg': {'mean': [1, 2]}},
     'preprocess_cfg.mean=[1, 2]'),
    ('openclip', {'model_cfg': {'embed_dim': 8}, 'preprocess_cfg': {'std': [1, 0, 1]}},
     'preprocess_cfg.std'),
    ('hf', [], 'JSON object'),
    ('hf', {'model_type': 7}, 'model_type=7'),
    ('hf', {'projection_dim': 1.5}, 'projection_dim=1.5'),
    ('hf', {'text_config': 'x'}, 'text_config must be a JSON object'),
    ('hf', {'text_config': {'hidden_size': 0}}, 'text_config.hidden_size=0'),
    ('hf', {'text_config': {'eos_token_id': 'x'}}, "text_config.eos_token_id='x'"),
    ('hf', {'text_config': {'eos_token_id': 49408}}, 'text_config.eos_token_id=49408'),
    ('hf', {'text_config': {'num_attention_heads': 7}}, 'text_config.num_attention_heads=7'),
    ('hf', {'vision_config': {'patch_size': 33}}, 'vision_config.patch_size=33'),
    ('hf', {'vision_config_dict': {'layer_norm_eps': 'a'}}, "vision_config_dict.layer_norm_eps='a'"),
]


@pytest.mark.parametrize('source, arch, message', BAD_ARCHS)
def test_every_architecture_field_is_checked_in_one_line(source, arch, message, tmp_path, capsys):
  weights = os.path.join(REFS, 'hf_eos7', 'model.safetensors')  # A real safetensors file.
  (tmp_path / 'arch.json').write_text(json.dumps(arch))
  code = import_weights.main(['--from', source, '--weights', weights, '--arch',
                              str(tmp_path / 'arch.json'), '--workdir', str(tmp_path / 'w'),
                              '--tokenizer', 'bytes'])
  err = capsys.readouterr().err.strip()
  assert code == 2 and len(err.splitlines()) == 1, err
  assert err.startswith(f'error: {tmp_path / "arch.json"}: ') and message in err, err


def test_hf_preprocessor_fields_are_checked(tmp_path):
  (tmp_path / 'config.json').write_text('{}')
  (tmp_path / 'preprocessor_config.json').write_text(json.dumps({'image_mean': 0.5}))
  with pytest.raises(ConfigError, match=r'preprocessor_config.image_mean=0.5 must be a list of 3'):
    import_weights.source_config('hf', str(tmp_path / 'config.json'))


def test_wrong_arch_and_unsupported_options_are_one_line_errors(tmp_path):
  weights = os.path.join(REFS, 'openclip_quickgelu', 'model.safetensors')
  with pytest.raises(ConfigError, match='has no tensor'):  # HF arch for OpenCLIP weights
    import_weights.import_weights('hf', weights, os.path.join(REFS, 'hf_eos7', 'arch.json'),
                                  str(tmp_path / 'a'), 'bytes')
  arch = json.load(open(os.path.join(REFS, 'openclip_quickgelu', 'arch.json')))
  arch['vision_cfg']['ls_init_value'] = 1e-5
  (tmp_path / 'ls.json').write_text(json.dumps(arch))
  with pytest.raises(ConfigError, match='ls_init_value'):
    import_weights.import_weights('openclip', weights, str(tmp_path / 'ls.json'),
                                  str(tmp_path / 'b'), 'bytes')
  arch = json.load(open(os.path.join(REFS, 'openclip_quickgelu', 'arch.json')))
  arch['vision_cfg']['width'] = 72  # Shapes no longer match the weights (3 heads of 24).
  (tmp_path / 'w72.json').write_text(json.dumps(arch))
  with pytest.raises(ConfigError, match='visual.conv1.weight makes img/patch_embed/kernel'):
    import_weights.import_weights('openclip', weights, str(tmp_path / 'w72.json'),
                                  str(tmp_path / 'c'), 'bytes')


@pytest.fixture(scope='module')
def probe(tmp_path_factory):
  """A tiny CLIP-shaped run (every parameter perturbed) and its exports for both libraries."""
  out = tmp_path_factory.mktemp('probe')
  config, params = interop_probe.make_probe_workdir(str(out / 'workdir'))
  images, tokens = interop_probe.probe_inputs(config)
  ours = interop_probe.embeddings(config, params, images, tokens)
  for target in ('openclip', 'hf'):
    export_weights(str(out / 'workdir'), None, target, str(out / target))
  return dict(out=out, params=params, images=images, tokens=tokens, ours=ours)


@pytest.mark.parametrize('target, ref_case, weights', [
    ('openclip', 'openclip_quickgelu', 'open_clip_model.safetensors'),
    ('hf', 'hf_eos7', 'model.safetensors')])
def test_export_has_the_library_layout_and_round_trips(probe, target, ref_case, weights, tmp_path):
  exported = read_safetensors(str(probe['out'] / target / weights))
  # Same depths as the reference models: the exported names must be exactly the ones the
  # library itself saves (checked loading in the library: tests/data/interop/export_check.json).
  library = read_safetensors(os.path.join(REFS, ref_case, 'model.safetensors'))
  assert sorted(exported) == sorted(library)
  assert all(exported[k].ndim == library[k].ndim for k in library)
  arch = 'open_clip_config.json' if target == 'openclip' else 'config.json'
  import_weights.import_weights(target, str(probe['out'] / target / weights),
                                str(probe['out'] / target / arch), str(tmp_path / 'back'),
                                f'clip_bpe:{interop_probe.BPE}')
  back = interop_probe.workdir_outputs(str(tmp_path / 'back'), probe['images'], probe['tokens'])
  for key, value in probe['ours'].items():
    assert np.max(np.abs(back[key] - value)) <= TOLERANCE, key


def test_export_of_a_scan_layers_run_unstacks_its_blocks(probe, tmp_path):
  config = interop_probe.probe_config()
  config.model.scan_layers = True
  params = probe['params']
  stacked = {'img': dict(params['img']), 'txt': dict(params['txt']),
             'log_logit_scale': params['log_logit_scale']}
  for tower in ('img', 'txt'):
    blocks = params[tower]['encoder']['blocks']
    encoder = dict(params[tower]['encoder'])
    encoder['blocks'] = jax.tree.map(lambda *xs: np.stack(xs), *[blocks[i] for i in sorted(blocks)])
    stacked[tower]['encoder'] = encoder
  import_weights.write_workdir(str(tmp_path / 'scanned'), config, stacked, {})
  export_weights(str(tmp_path / 'scanned'), None, 'hf', str(tmp_path / 'hf'))
  unscanned = read_safetensors(str(probe['out'] / 'hf' / 'model.safetensors'))
  exported = read_safetensors(str(tmp_path / 'hf' / 'model.safetensors'))
  assert sorted(exported) == sorted(unscanned)
  for key, value in unscanned.items():
    np.testing.assert_array_equal(exported[key], value)


def test_export_folds_the_patch_bias_into_positions(probe):
  exported = read_safetensors(str(probe['out'] / 'openclip' / 'open_clip_model.safetensors'))
  params = probe['params']
  pos, bias = np.asarray(params['img']['pos_embed']), np.asarray(params['img']['patch_embed']['bias'])
  np.testing.assert_array_equal(exported['visual.positional_embedding'][0], pos[0])
  np.testing.assert_allclose(exported['visual.positional_embedding'][1:], pos[1:] + bias, atol=0)
  assert np.abs(bias).max() > 0.01


def test_export_names_what_a_library_cannot_express(tmp_path):
  config = interop_probe.probe_config()
  config.model.image_ln_pre = False
  from pretrain.step.train_step import init_params
  import_weights.write_workdir(str(tmp_path / 'w'), config, init_params(config, 0), {})
  with pytest.raises(ConfigError, match='pre_layrnorm'):
    export_weights(str(tmp_path / 'w'), None, 'hf', str(tmp_path / 'hf'))
  export_weights(str(tmp_path / 'w'), None, 'openclip', str(tmp_path / 'oc'))  # OpenCLIP can
  assert json.load(open(tmp_path / 'oc' / 'exported.json'))['vision_cfg']['no_ln_pre'] is True
  for field, value, message in (('image_pool', 'gap', 'class token'),
                                ('text_causal', False, 'causal text tower')):
    config = interop_probe.probe_config()
    config.model[field] = value
    folder = tmp_path / field
    import_weights.write_workdir(str(folder), config, init_params(config, 0), {})
    with pytest.raises(ConfigError, match=message):
      export_weights(str(folder), None, 'openclip', str(tmp_path / f'{field}_out'))


def test_zeroshot_job_runs_on_an_imported_workdir(probe, tmp_path, capsys):
  # The HF export has its tokenizer.json beside config.json: no --tokenizer needed.
  assert import_weights.main(['--from', 'hf', '--weights', str(probe['out'] / 'hf' / 'model.safetensors'),
                              '--arch', str(probe['out'] / 'hf' / 'config.json'),
                              '--workdir', str(tmp_path / 'imported')]) == 0
  from eval import zeroshot
  from eval.job import cli
  code = cli(zeroshot.parse, zeroshot.make_job, [
      '--workdir', str(tmp_path / 'imported'), '--dataset', 'shapes:zeroshot',
      '--templates', 'shapes', '--once'])
  assert code == 0
  [found] = (tmp_path / 'imported' / 'eval' / 'zeroshot').glob('shapes_zeroshot-*/step_0.json')
  metrics = json.load(open(found))
  assert metrics['num_examples'] > 0 and 0.0 <= metrics['acc1'] <= 1.0


def test_lit_locks_the_imported_tower_and_trains_the_text_tower(probe, tmp_path):
  from pretrain.config.cli import parse_args
  from pretrain.train import train
  workdir = str(tmp_path / 'lit')
  config, _ = parse_args([
      '--config', f'configs/lit.py:{probe["out"] / "workdir"}', '--workdir', workdir,
      '--config.total_steps=4', '--config.batch_size=16', '--config.checkpoint_every=2',
      '--config.optim.warmup_steps=1', '--config.eval.zeroshot='])
  train(config, workdir)
  run = RunModel(workdir)
  _, step2 = restore_params(workdir, 2, run.abstract_params)
  _, step4 = restore_params(workdir, 4, run.abstract_params)
  imported = probe['params']
  for new, old in zip(jax.tree.leaves(step4['img']), jax.tree.leaves(imported['img'])):
    np.testing.assert_array_equal(np.asarray(new), np.asarray(old))  # bit-identical
  moved = [float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
           for a, b in zip(jax.tree.leaves(step4['txt']), jax.tree.leaves(step2['txt']))]
  assert min(moved) > 0  # every text parameter trains
  assert float(step4['log_logit_scale']) != float(step2['log_logit_scale'])


def test_frozen_parameters_hold_no_optimizer_state_and_patterns_are_checked():
  from tests.helpers import mesh, step_builder, tiny_config
  config = tiny_config()
  full = step_builder(config, mesh(1, 1, jax.devices()[:1]))
  config.freeze = ('img/.*',)
  lit = step_builder(config, mesh(1, 1, jax.devices()[:1]))
  frozen = len(jax.tree.leaves(full.abstract_state['params']['img']))
  state_leaves = lambda b: len(jax.tree.leaves(b.abstract_state['opt_state']))
  assert state_leaves(full) - state_leaves(lit) == 2 * frozen  # AdamW's mu and nu
  # No gradient computation either: the traced step has no weight-gradient matmul for any image
  # kernel (nor the input-gradient ones); counted in the lowered program, before XLA's DCE.
  from data.records import BAD_KINDS
  batch = {'image': jax.ShapeDtypeStruct((16, 16, 16, 3), np.uint8),
           'text': jax.ShapeDtypeStruct((16, 8), np.int32),
           'bad': jax.ShapeDtypeStruct((16, len(BAD_KINDS)), bool)}
  dots = lambda b: b.jit_step().lower(b.abstract_state, batch).as_text().count('dot_general')
  kernels = sum(1 for path in jax.tree_util.tree_leaves_with_path(
      full.abstract_state['params']['img']) if 'kernel' in str(path[-1]))
  assert dots(full) - dots(lit) >= 2 * kernels
  config.freeze = ('image/.*',)
  with pytest.raises(ConfigError, match="freeze: 'image/.\\*' matches no parameter"):
    step_builder(config, mesh(1, 1, jax.devices()[:1]))


def test_init_from_checks_names_and_shapes_and_freeze_refuses_grad_cache(probe):
  from pretrain.runtime.init_from import init_from
  from pretrain.config import validate
  from pretrain.step.train_step import init_params
  from tests.helpers import mesh
  the_mesh = mesh(1, 1, jax.devices()[:1])
  config = interop_probe.probe_config()
  config.init_from = str(probe['out'] / 'workdir')
  config.model.custom.image_width = 64
  params = init_params(config, 0)
  shardings = jax.tree.map(lambda _: jax.sharding.NamedSharding(the_mesh, jax.sharding.PartitionSpec()), params)
  with pytest.raises(ConfigError, match=r'img/cls_token has shape \(1, 1, 48\), this config makes \(1, 1, 64\)'):
    init_from(config, params, shardings, the_mesh)
  config.init_from_include = ('txt/.*',)  # The text tower alone fits: taken, image left alone.
  taken = init_from(config, params, shardings, the_mesh)
  np.testing.assert_array_equal(taken['txt']['pos_embed'], probe['params']['txt']['pos_embed'])
  np.testing.assert_array_equal(taken['img']['pos_embed'], params['img']['pos_embed'])
  config.freeze, config.accum_steps = ('img/.*',), 2
  with pytest.raises(ConfigError, match='freeze with accum_steps > 1'):
    validate.check_training(config, 1, 1)


"""CLIP_benchmark's webdataset layout, its built-in metadata, and the suite runner (eval.suite) on
a real tiny run: the table holds exactly the single-set jobs' numbers."""

import json
import os
import shutil
import tarfile

import numpy as np
import pytest

from data.errors import ConfigError
from data.make_corpus import add_member
from data.shapes import ShapesSource
from eval import benchmark_meta, retrieval, suite, zeroshot
from eval.benchmark_data import dataset_folder, folder_name, open_benchmark
from eval.benchmark_export import export
from eval.classnames import resolve_classnames
from eval.job import cli, watch
from eval.templates import CLIP80, default_templates
from tests.corpora import good_image
from tests.test_eval_jobs import run_dir  # noqa: F401  (the trained demo run, a module fixture)

CLS, RET = 'vtab/shapes', 'shapes_captions'  # a classification set and a retrieval set


def write_sets(root: str) -> None:
  """The two tiny sets: 37 shapes (3 shards, own templates) and 23 captioned shapes."""
  export(ShapesSource('zeroshot', 16), root, CLS, 'classification', count=37, per_shard=15,
         templates=['a photo of a {c}', 'a drawing of a {c}'])
  export(ShapesSource('retrieval', 16), root, RET, 'retrieval', count=23)


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('benchmarks'))
  write_sets(root)
  return root


def test_names_map_to_clip_benchmark_folders():
  assert folder_name('vtab/cifar10') == 'wds_vtab-cifar10'
  assert folder_name('imagenet1k') == 'wds_imagenet1k'
  assert dataset_folder('gs://b/sets', 'vtab/pets') == 'gs://b/sets/wds_vtab-pets'


def test_builtin_imagenet_names_and_template_counts_are_the_published_ones():
  names = benchmark_meta.builtin_classnames('imagenet1k')
  assert len(names) == 1000 and names[0] == 'tench' and names[-1] == 'toilet paper'
  # As published (CLIP_benchmark, open_clip, OpenAI's notebook): 998 distinct, two repeated.
  repeated = {n for n in names if names.count(n) > 1}
  assert len(set(names)) == 998 and repeated == {'missile', 'sunglasses'}
  assert [i for i, n in enumerate(names) if n in repeated] == [657, 744, 836, 837]
  assert len(benchmark_meta.imagenet_wnids()) == 1000 == len(set(benchmark_meta.imagenet_wnids()))
  for name in ('imagenetv2', 'imagenet_sketch'):
    assert benchmark_meta.builtin_classnames(name) == names
  for name in ('imagenet-a', 'imagenet-r', 'imagenet-o'):
    subset = benchmark_meta.builtin_classnames(name)
    rest = iter(names)  # a subsequence of ImageNet-1k's names: label order kept
    assert len(subset) == 200 and all(n in rest for n in subset)
  counts = {'imagenet1k': 80, 'cifar10': 18, 'cifar100': 18, 'vtab/cifar10': 18, 'food101': 1,
            'sun397': 2, 'cars': 8, 'vtab/eurosat': 3, 'imagenetv2': 80, 'imagenet-r': 80}
  assert {k: len(benchmark_meta.builtin_templates(k)) for k in counts} == counts
  assert benchmark_meta.builtin_templates('imagenet1k') == list(CLIP80)
  assert benchmark_meta.has_own_templates('vtab/cifar10')
  assert not benchmark_meta.has_own_templates('imagenet-r')  # ImageNet's, as CLIP_benchmark


def test_named_lists_and_benchmark_files(tmp_path):
  lists = benchmark_meta.collections()
  assert lists['imagenet_robustness'] == ['imagenetv2', 'imagenet_sketch', 'imagenet-a',
                                          'imagenet-r', 'objectnet']
  assert lists['retrieval'] == ['mscoco_captions', 'flickr8k', 'flickr30k']
  assert len(lists['vtab+']) == 36 and lists['vtab+'][:2] == ['imagenet1k', 'imagenetv2']
  assert suite.benchmark_names('imagenet1k, retrieval,flickr30k') == [
      'imagenet1k', 'mscoco_captions', 'flickr8k', 'flickr30k']
  tasks = tmp_path / 'tasks.txt'
  tasks.write_text('# my suite\ncifar10\n\nvtab/pets  # a VTAB set\nimagenet_robustness\n')
  assert suite.benchmark_names(str(tasks)) == ['cifar10', 'vtab/pets', *lists[
      'imagenet_robustness']]
  assert benchmark_meta.default_task('flickr30k') == 'retrieval'
  assert benchmark_meta.default_task('vtab/cifar10') == 'classification'


class _Labelled:
  """A labelled set's class names, as tfds reports them."""

  def __init__(self, classnames):
    self.classnames = classnames


def test_tfds_names_get_builtin_class_names_and_templates():
  wnids = _Labelled(benchmark_meta.imagenet_wnids())
  curated = benchmark_meta.builtin_classnames('imagenet1k')
  assert resolve_classnames(wnids, 'tfds:imagenet2012:validation', None) == curated
  assert resolve_classnames(wnids, 'tfds:imagenet_v2', None) == curated
  cifar = _Labelled(['airplane', 'automobile'] + [f'c{i}' for i in range(8)])
  assert resolve_classnames(cifar, 'tfds:cifar10:test', None) == cifar.classnames
  assert len(default_templates('tfds:cifar10:test')) == 18
  assert default_templates('tfds:imagenet2012:validation') == list(CLIP80)
  assert default_templates('shapes:zeroshot') == list(CLIP80)


def test_sets_open_with_their_task_names_and_templates(data_root, tmp_path):
  cls = open_benchmark(data_root, CLS)
  shapes = ShapesSource('zeroshot', 16)
  assert cls.task == 'classification' and len(cls) == 37 and len(cls.wds.paths) == 3
  np.testing.assert_array_equal(cls.labels(), [shapes[i]['label'] for i in range(37)])
  assert cls.classnames == shapes.classnames
  assert cls.templates == ['a photo of a {c}', 'a drawing of a {c}']
  assert cls[5]['label'] == shapes[5]['label'] and cls[5]['image'].size == (16, 16)
  ret = open_benchmark(data_root, RET)
  assert ret.task == 'retrieval' and len(ret) == 23 and ret.classnames is ret.templates is None
  assert ret.text(4) == ShapesSource('retrieval', 16).text(4)
  # No templates file: CLIP_benchmark's for the name. No class names file: its names.
  export(ShapesSource('zeroshot', 16), str(tmp_path), 'vtab/cifar10', 'classification', count=4)
  assert len(open_benchmark(str(tmp_path), 'vtab/cifar10').templates) == 18
  export(ShapesSource('zeroshot', 16), str(tmp_path), 'imagenet1k', 'classification', count=4)
  os.remove(tmp_path / 'wds_imagenet1k' / 'classnames.txt')
  imagenet = open_benchmark(str(tmp_path), 'imagenet1k')
  assert imagenet.classnames == benchmark_meta.builtin_classnames('imagenet1k')
  assert imagenet.templates == list(CLIP80)


def test_bad_sets_are_one_line_errors(data_root, tmp_path):
  with pytest.raises(ConfigError, match='no folder .*wds_imagenet-a .*clip_benchmark_export'):
    open_benchmark(data_root, 'imagenet-a')
  with pytest.raises(ConfigError, match='no shards .*wds_shapes_captions/train/'):
    open_benchmark(data_root, RET, split='train')
  os.makedirs(tmp_path / 'wds_multi' / 'test')
  with tarfile.open(tmp_path / 'wds_multi' / 'test' / '0.tar', 'w') as tar:
    add_member(tar, 'a.jpg', good_image())
    add_member(tar, 'a.npy', b'\x93NUMPY')  # CLIP_benchmark's multilabel sets
  with pytest.raises(ConfigError, match=r'neither \.cls .* nor \.txt'):
    open_benchmark(str(tmp_path), 'multi')


def test_cls_labels_live_in_the_shard_index_file(tmp_path):
  from data.records import BadRecord
  from data.tarindex import decode
  from data.wds import WdsSource
  os.makedirs(tmp_path / 'wds_odd' / 'test')
  with tarfile.open(tmp_path / 'wds_odd' / 'test' / '0.tar', 'w') as tar:
    for key, label in (('a', b'3'), ('b', b' 12\n'), ('c', b'x')):
      add_member(tar, f'{key}.png', good_image())
      add_member(tar, f'{key}.cls', label)
  cache = tmp_path / 'cache'
  odd = open_benchmark(str(tmp_path), 'odd', cache_dir=str(cache))
  assert [odd.wds.label(i) for i in (0, 1)] == [3, 12] and odd[1]['label'] == 12
  with pytest.raises(BadRecord, match=r"odd, key 0.tar/c: .cls is not an integer: 'x'"):
    odd.labels()
  [index_file] = cache.iterdir()
  assert decode(index_file.read_bytes())[0]['labels'] == ['3', '12', 'x']
  again = WdsSource(str(tmp_path / 'wds_odd/test/*.tar'), str(cache))
  assert again.built == 0 and again.label_texts == ['3', '12', 'x']  # read, not re-scanned


def _single_set_metrics(workdir, data_root: str, name: str, module, *flags) -> dict:
  """What eval.zeroshot / eval.retrieval give on the set's shards at step 6."""
  shards = f'wds:{dataset_folder(data_root, name)}/test/*.tar'
  args = module.parse(['--workdir', str(workdir), '--dataset', shards, '--step', '6',
                       '--batch_size', '16', *flags])
  return module.make_job(args)[1](6)[1]


def test_suite_table_has_the_single_set_numbers_and_watch_skips_done_steps(
    run_dir, data_root, tmp_path):  # noqa: F811
  workdir = tmp_path / 'run'
  shutil.copytree(run_dir, workdir, ignore=shutil.ignore_patterns('eval'))
  args = suite.parse(['--workdir', str(workdir), '--benchmarks', f'{CLS},{RET}', '--data_root',
                      data_root, '--step', '6', '--batch_size', '16'])
  outputs, evaluate = suite.make_job(args)
  evaluate(6)
  folder = workdir / 'eval' / 'suite'
  result = json.loads((folder / 'step_6.json').read_text())
  got = result['results']
  folder_of = dataset_folder(data_root, CLS)
  zs = _single_set_metrics(workdir, data_root, CLS, zeroshot,
                           '--classnames', f'{folder_of}/classnames.txt',
                           '--templates', f'{folder_of}/zeroshot_classification_templates.txt')
  rt = _single_set_metrics(workdir, data_root, RET, retrieval)
  for key in ('acc1', 'acc5', 'mean_per_class_recall', 'num_examples'):
    assert got[CLS][key] == zs[key], key
  for key in ('image_retrieval_recall@5', 'text_retrieval_recall@5', 'image_retrieval_recall@1',
              'text_retrieval_mean_rank', 'num_examples', 'num_captions'):
    assert got[RET][key] == rt[key], key
  assert got[CLS]['num_examples'] == 37 and got[RET]['num_captions'] == 23 * 5
  assert result['average']['acc1'] == zs['acc1']
  assert result['average_over'] == {**{k: 1 for k in result['average']}}
  csv_lines = (folder / 'step_6.csv').read_text().splitlines()
  assert csv_lines[0].startswith('dataset,task,num_examples,acc1,acc5,mean_per_class_recall,')
  assert [line.split(',')[0] for line in csv_lines[1:]] == [CLS, RET, 'average']
  assert csv_lines[1].split(',')[3] == repr(zs['acc1'])
  markdown = (folder / 'step_6.md').read_text()
  assert f'| {RET} | retrieval | 23 |' in markdown and outputs.done(6)
  # --watch evaluates each checkpoint once: 4 now (2 is gone, 6 is done), nothing when restarted.
  shutil.rmtree(workdir / 'checkpoints' / '2')
  args = suite.parse(['--workdir', str(workdir), '--benchmarks', f'{CLS},{RET}', '--data_root',
                      data_root, '--watch', '--batch_size', '16'])
  for expected in ([4], []):
    outputs, evaluate = suite.make_job(args)
    assert watch(str(workdir), outputs, evaluate, poll_seconds=0.01, max_polls=3) == expected
  assert {f for f in os.listdir(folder) if f.startswith('step_')} == {
      f'step_{s}.{ext}' for s in (4, 6) for ext in ('json', 'md', 'csv')}


def test_suite_errors_are_one_line(run_dir, data_root, capsys):  # noqa: F811
  for benchmarks, message in [
      ('nosuchset', "unknown benchmark 'nosuchset': not a CLIP_benchmark set name nor a list"),
      (f'{CLS},flickr30k', 'benchmark flickr30k: no folder'),
  ]:
    code = cli(suite.parse, suite.make_job, ['--workdir', str(run_dir), '--benchmarks',
                                             benchmarks, '--data_root', data_root, '--once'])
    err = capsys.readouterr().err
    assert code == 2 and err.count('\n') == 1 and err.startswith('error: '), err
    assert message in err, err


@pytest.mark.slow
def test_suite_on_sets_in_a_bucket_matches_local(run_dir, data_root, gcs, tmp_path):  # noqa: F811
  """Sets written to gs:// (the GCS emulator) give the local sets' table, number for number."""
  bucket = gcs.bucket('suite-sets')
  write_sets(f'{bucket}/sets')
  results = []
  for root in (data_root, f'{bucket}/sets'):
    workdir = tmp_path / f'run{len(results)}'
    shutil.copytree(run_dir, workdir, ignore=shutil.ignore_patterns('eval'))
    code = cli(suite.parse, suite.make_job, ['--workdir', str(workdir), '--benchmarks',
                                             f'{CLS},{RET}', '--data_root', root, '--step', '6'])
    assert code == 0
    results.append(json.loads((workdir / 'eval' / 'suite' / 'step_6.json').read_text()))
  assert results[0]['results'] == results[1]['results']
  assert results[1]['given']['data_root'] == f'{bucket}/sets'


def test_suite_at_matryoshka_prefixes_has_the_single_set_numbers(run_dir, data_root, tmp_path):  # noqa: F811
  workdir = tmp_path / 'run'
  shutil.copytree(run_dir, workdir, ignore=shutil.ignore_patterns('eval'))
  args = suite.parse(['--workdir', str(workdir), '--benchmarks', f'{CLS},{RET}', '--data_root',
                      data_root, '--step', '6', '--batch_size', '16', '--dims', '8,32'])
  suite.make_job(args)[1](6)
  result = json.loads((workdir / 'eval' / 'suite' / 'step_6.json').read_text())
  got = result['results']
  folder_of = dataset_folder(data_root, CLS)
  zs = _single_set_metrics(workdir, data_root, CLS, zeroshot, '--dims', '8,32',
                           '--classnames', f'{folder_of}/classnames.txt',
                           '--templates', f'{folder_of}/zeroshot_classification_templates.txt')
  rt = _single_set_metrics(workdir, data_root, RET, retrieval, '--dims', '8,32')
  for key in ('acc1', 'acc1@8', 'acc1@32', 'acc5@8', 'mean_per_class_recall@32'):
    assert got[CLS][key] == zs[key], key
  for key in ('image_retrieval_recall@5', 'image_retrieval_recall@5@8',
              'text_retrieval_recall@1@32'):
    assert got[RET][key] == rt[key], key
  assert result['average']['acc1@8'] == zs['acc1@8']
  header = (workdir / 'eval' / 'suite' / 'step_6.csv').read_text().splitlines()[0].split(',')
  assert header[3:6] == ['acc1', 'acc1@8', 'acc1@32']
  assert 'image_retrieval_recall@1@8' in header

"""Eval on any mesh: embeddings come back in row order whatever the mesh's device order, including
meshes where a process's devices are not neighbours (TPU device orders)."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np

from eval.embed import Embedder, process_rows
from pretrain.parallel import sharding
from tests.helpers import ROOT, random_batch, step_builder, tiny_config

PERMUTATION = (3, 6, 0, 5, 1, 7, 2, 4)
COUNT, BATCH = 21, 8  # three global batches, the last one padded


def embeddings(devices) -> tuple[np.ndarray, np.ndarray]:
  """(image, text) embeddings of COUNT random rows on a data mesh over `devices`, in that order."""
  config = tiny_config()
  mesh = sharding.make_mesh({'data': -1, 'fsdp': 1}, list(devices))
  builder = step_builder(config, mesh)
  state = builder.init_state()
  embedder = Embedder(builder.graphdef, state.params, mesh, state.batch_stats)
  rows = random_batch(config, COUNT, seed=1)
  return (embedder.embed('images', lambda i: rows['image'][i], COUNT, BATCH),
          embedder.embed('texts', lambda i: rows['text'][i], COUNT, BATCH))


def test_a_permuted_mesh_gives_the_same_rows_in_the_same_order():
  devices = jax.devices()
  (images, texts), (p_images, p_texts) = embeddings(devices), embeddings(
      [devices[i] for i in PERMUTATION])
  assert images.shape[0] == texts.shape[0] == COUNT
  np.testing.assert_allclose(p_images, images, atol=1e-6)
  np.testing.assert_allclose(p_texts, texts, atol=1e-6)
  # Row order itself: one device holds every row of each batch.
  one_device = embeddings(devices[:1])
  np.testing.assert_allclose(one_device[0], images, atol=1e-6)
  np.testing.assert_allclose(one_device[1], texts, atol=1e-6)


def test_rows_of_a_process_follow_its_devices():
  devices = jax.devices()
  mesh = sharding.make_mesh({'data': -1, 'fsdp': 1}, [devices[i] for i in PERMUTATION])
  assert process_rows(sharding.batch_sharding(mesh), 16).tolist() == list(range(16))


# Two processes of four devices whose mesh interleaves them: process 0 holds blocks 0, 2, 4, 6.
TWO_PROCESS_SCRIPT = """
import sys, jax, numpy as np
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
from tests.test_eval_mesh import embeddings
from eval.embed import process_rows
from pretrain.parallel import sharding
by_process = [[d for d in jax.devices() if d.process_index == p] for p in (0, 1)]
order = [d for pair in zip(by_process[0][::-1], by_process[1]) for d in pair]
images, texts = embeddings(order)
mesh = sharding.make_mesh({'data': -1, 'fsdp': 1}, order)
print('ROWS', process_rows(sharding.batch_sharding(mesh), 16).tolist())
if jax.process_index() == 0:
  np.save(sys.argv[3] + '/images.npy', images); np.save(sys.argv[3] + '/texts.npy', texts)
"""


def test_two_processes_on_an_interleaved_mesh(tmp_path):
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS='--xla_force_host_platform_device_count=4')
  procs = [subprocess.Popen([sys.executable, '-c', TWO_PROCESS_SCRIPT, f'127.0.0.1:{port}',
                             str(pid), str(tmp_path)], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE) for pid in (0, 1)]
  outputs = [p.communicate(timeout=600) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
  rows = [[line for line in out.splitlines() if line.startswith('ROWS')][0] for out, _ in outputs]
  assert rows == ['ROWS [0, 1, 4, 5, 8, 9, 12, 13]', 'ROWS [2, 3, 6, 7, 10, 11, 14, 15]']
  images, texts = embeddings(jax.devices())
  np.testing.assert_allclose(np.load(tmp_path / 'images.npy'), images, atol=1e-6)
  np.testing.assert_allclose(np.load(tmp_path / 'texts.npy'), texts, atol=1e-6)

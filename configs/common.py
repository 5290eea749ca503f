"""Config pieces shared by the config files: defaults for every group, overridable per run."""

import ml_collections

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def base_config() -> ml_collections.ConfigDict:
  """Every field the trainer reads, with CPU-demo defaults."""
  config = ml_collections.ConfigDict()
  config.seed = 0                  # Parameter init, data order and augmentation.
  config.total_steps = 200
  config.batch_size = 128          # Global batch: all processes and devices together.
  config.accum_steps = 1           # Gradient caching: towers run on batch_size/accum_steps at a time.
  config.log_every = 20            # Steps between progress lines / metrics.jsonl rows.
  config.checkpoint_every = 100    # Steps between checkpoints (one is always written at the end).
  config.keep_checkpoints = 2      # Keep-N: older complete checkpoints are deleted.
  config.exit_after_step = 0       # Checkpoint and exit at this step, as if preempted (drills); 0 = off.
  config.max_consecutive_skips = 10  # Non-finite updates in a row before the run stops.
  # CPU only (off on GPU/TPU): fault in XLA's per-step temporary block right after dispatching the
  # step, instead of page by page during it (pretrain/backends/cpu/prefault.py).
  config.prefault_step_memory = True
  # CPU only: slices of each device's batch the towers run on as separate computations (pretrain/
  # backends/cpu/tower_slices.py; same maths), which XLA:CPU runs side by side. 0 = auto: 4 (or 2)
  # slices of >= 16 examples on the CPU backend without FSDP; 1 on accelerators, where > 1 is an
  # error. BatchNorm (EfficientNet) image towers always take the whole batch.
  config.tower_batch_chunks = 0
  # Start from another run's (or an imported model's) parameters instead of random ones: its
  # workdir, and regexes of the parameter paths to take from it (e.g. 'img/.*' for one tower).
  config.init_from = ''
  config.init_from_include = ('.*',)
  # Regexes of parameter paths (e.g. 'img/.*') kept frozen: no gradient, optimizer state or decay.
  config.freeze = ()
  # jax's persistent compilation cache, so a restarted run loads its compiled step instead of
  # compiling it again: 'auto' = WORKDIR/compile_cache (a bucket folder works too), or a
  # folder; '' = off.
  config.compile_cache_dir = 'auto'
  # GPU only: XLA flags for run-to-run deterministic GPU ops (reductions, scatters; see README's
  # determinism table), so resumes are bit-identical there too; slower. CPU and TPU ignore it.
  config.deterministic = False
  # Test-only hooks; leave empty in real runs.
  config.debug = ml_collections.ConfigDict(dict(
      nonfinite_at_attempts=(),    # 1-based step calls whose loss is replaced by NaN.
  ))

  # Devices: the batch is split over data x fsdp; parameters are sharded over fsdp. -1 = the rest.
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
  config.param_sharding = 'fsdp'   # 'fsdp' (largest divisible dim over the fsdp axis) or 'replicate'.

  config.model = ml_collections.ConfigDict(dict(
      variant='demo',              # Tower sizes, see pretrain/models/variants.py; 'custom': below.
      custom=ml_collections.ConfigDict(),  # Sizes of variant 'custom' (keys: variants.SIZE_KEYS).
      activation='gelu',           # MLP activation: 'gelu' (exact) or 'quick_gelu' (OpenAI CLIP).
      dtype='float32',             # Compute dtype ('float32' or 'bfloat16'); parameters stay fp32.
      # Op set of dense/LayerNorm/GELU/attention (same parameters, same functions): 'stock' (jax.nn,
      # autodiff), 'cpu' (hand-written derivatives for XLA:CPU, pretrain/backends/cpu/ops.py; CPU
      # only) or 'auto' ('cpu' on the CPU backend, 'stock' on GPU/TPU).
      ops='auto',
      # Attention implementation (same function, same parameters): 'xla' (jax.nn's XLA path, any
      # platform), 'cudnn' (cuDNN flash attention: NVIDIA GPUs, model.dtype bfloat16), 'splash'
      # (Pallas splash attention: TPU), 'cpu' (the CPU op set's: CPU only), or 'auto' (cudnn on a
      # GPU under bf16, else xla there; splash on TPU; the op set's own on the CPU).
      attention='auto',
      image_remat='none',          # Recompute in backward: 'none' | 'dots' (keep matmuls) | 'full'.
      text_remat='none',           # The same for the text tower.
      scan_layers=False,           # Stack blocks and lax.scan them (one block compiled per tower).
      image_size=32,
      image_pool='cls',            # ViT: 'cls' | 'gap' | 'map' (attention pooling).
      image_ln_pre=False,          # ViT: LayerNorm before the first block (CLIP's ln_pre).
      image_drop_path=0.2,         # EfficientNet: stochastic depth rate of the last block.
      image_bn_momentum=0.99,      # EfficientNet: BatchNorm running-average momentum.
      image_mean=(0.5, 0.5, 0.5),  # Per-channel normalisation applied on device to [0, 1] pixels.
      image_std=(0.5, 0.5, 0.5),
      vocab_size=64,               # Rows of the token embedding; must be >= the tokenizer's vocab.
      context_length=16,           # Tokens per caption, end-of-text included.
      text_causal=True,            # Causal mask (CLIP) or bidirectional (BERT/ALIGN).
      text_pool='eot',             # 'eot' (last non-padding token) | 'cls' ([CLS], BERT) |
                                   # 'argmax' (highest id, OpenCLIP) | 'eos_id' (first text_eos_id, HF).
      text_eos_id=-1,              # The id 'eos_id' pooling looks for.
  ))
  config.loss = ml_collections.ConfigDict(dict(
      name='softmax',              # 'softmax' (CLIP/ALIGN, symmetric) or 'sigmoid' (SigLIP).
      impl='auto',                 # softmax: 'local_rows' (auto; b x B logits) or 'tiled'; sigmoid: 'ring'.
      tile=1024,                   # Columns per tile of the 'tiled' softmax.
      init_logit_bias=-10.0,       # SigLIP's bias init (sigmoid only); SigLIP's scale init is 10.
      init_logit_scale=1 / 0.07,   # CLIP 1/0.07; ALIGN 1.0 (temperature 1).
      max_logit_scale=100.0,       # Clamp of the scale (CLIP: 100); 0 = none.
      label_smoothing=0.0,         # ALIGN: 0.1.
      # Matryoshka (MRL): also train these prefixes of the embedding, e.g. (32, 64, 128); each
      # L2-renormalised. Ascending, unique, each <= the embedding width; the full width is always
      # trained (appended with weight 1 if not listed). () = off.
      matryoshka_dims=(),
      matryoshka_weights=(),       # One weight per matryoshka_dims entry; () = all 1.
      matryoshka_per_prefix_temperature=False,  # One learned temperature (and SigLIP bias) per prefix.
  ))
  config.optim = ml_collections.ConfigDict(dict(
      name='adamw',                # 'adamw' or 'lamb' (ALIGN).
      lr=1e-3, warmup_steps=20, end_lr_ratio=0.0,  # Linear warmup, then decay to lr*end_lr_ratio...
      decay='cosine',              # ...'cosine' or 'linear' (ALIGN).
      weight_decay=0.1, b1=0.9, b2=0.98, eps=1e-6,  # Decay skips 1-d, pos/cls embeddings, temperature.
      grad_clip_norm=1.0,          # Global-norm clipping; 0 = off.
  ))
  config.data = ml_collections.ConfigDict(dict(
      train='shapes:train',        # Source spec (see data/sources.py).
      tokenizer='shapes',          # bytes | shapes | hf:PATH | sentencepiece:PATH | clip_bpe:PATH.
      lowercase=True,
      resize=0,                    # Shorter side before the random crop; 0 = image_size (no crop).
      flip=False,                  # Random horizontal flip.
      # 'resize_crop' (resize the shorter side to `resize`, random crop) or 'random_resized_crop'
      # (OpenCLIP's train transform: a random box of area share in rrc_scale and aspect 3/4..4/3,
      # resized to image_size; `resize` is then unused). Both are seeded by the global position.
      augment='resize_crop',
      rrc_scale=(0.9, 1.0),        # random_resized_crop's area range (OpenCLIP's default).
      num_threads=2,               # grain reader threads per process.
      prefetch=4,                  # Batches prefetched by grain.
      workers=0,                   # grain worker processes (0: threads of this process only).
      on_bad_record='skip',        # 'skip' (count, log once, substitute) or 'error' (stop).
      max_pixels=89_478_485,       # Larger images are refused before decoding (bombs).
      # wds: folder of the shard index files (`python -m data.index SPEC --out DIR`; local or a
      # bucket), read first and where start-up writes the ones it has to make. '' = read them beside
      # the shards, then in WORKDIR/data_index (where missing ones are written).
      index_dir='',
      # Share of the words of a sample of the training captions the tokenizer maps to its unknown
      # token, above which the run is refused at start-up (a warning from 0.02); 1.0 = never refuse.
      max_unknown_token_rate=0.1,
  ))
  # Evaluations while training (OpenCLIP's --zeroshot-frequency, big_vision's evaluators), with
  # the offline jobs' code: rows of metrics.jsonl and TensorBoard tagged <kind>/<dataset>/<metric>,
  # as `python -m eval.zeroshot` / `eval.retrieval` tag theirs. The run waits for them: keep the
  # sets small and evaluate big ones with the offline jobs.
  config.eval = ml_collections.ConfigDict(dict(
      every=0,                     # Steps between evaluations; 0 = at the final step only.
      # More evaluations, each 'KIND=SPEC': KIND 'zeroshot' (a labelled set) or 'retrieval'
      # (a captioned set), SPEC a data spec, e.g. ('retrieval=shapes:retrieval',).
      tasks=(),
      zeroshot='shapes:zeroshot',  # A zero-shot set, evaluated first ('' = none).
      templates='shapes',          # Prompt set name (eval/templates.py) or a file of templates.
      batch_size=256,              # Examples per embedding batch.
  ))
  # Experiment trackers beside TensorBoard and metrics.jsonl (process 0 logs the same rows).
  config.log = ml_collections.ConfigDict(dict(
      # Weights & Biases (pip install wandb; pretrain/runtime/tracker.py). The tracker run's id is
      # kept in WORKDIR/wandb_run_id.txt, so a resumed run continues the same tracker run.
      wandb=ml_collections.ConfigDict(dict(
          project='',              # W&B project; '' = no W&B run.
          entity='',               # W&B user or team; '' = your default entity.
          name='',                 # The tracker run's display name; '' = W&B picks one.
          # 'online' (sent as it trains), 'offline' (files under WANDB_DIR, else WORKDIR/wandb,
          # for `wandb sync` later) or 'disabled' (no W&B run).
          mode='online',
      )),
  ))
  return config

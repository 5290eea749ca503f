#!/usr/bin/env bash
# One lent GPU (H100/H200), under 8 minutes: the GPU-only checks and the accelerator benchmark.
#   OUT=/some/dir bash benchmarks/gpu_session.sh        (PYTHON=... to pick the interpreter)
# Writes JSON under $OUT (benchmarks/results/gpu_session by default), most important first, each
# step under its own `timeout` within BUDGET_S seconds in all (default 450), so a slow compile
# costs the later steps, never the session:
#   1. cuDNN attention equals XLA's within tolerance (bf16, the towers' shapes; model-level too
#      where the config has model.attention)                      -> gpu_checks_attention.json
#   2. CLIP B/32, B/16, L/14 in bf16, each attention implementation -> accelerator_bf16.json
#   3. the same step twice, bit for bit, with and without --xla_gpu_deterministic_ops
#                                                                  -> determinism_{flag,default}.json
#   4. the same models in fp32 (XLA attention; cuDNN takes bf16)   -> accelerator_fp32.json
# SMOKE=1 runs every step at CPU sizes (a dry run of this script on a machine without a GPU).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu_session}
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-450}
SMOKE_FLAG=${SMOKE:+--smoke}
mkdir -p "$OUT"
export PYTHONPATH=$PWD
unset XLA_FLAGS
start=$SECONDS
# Seconds left for a step: what remains of the budget, at most $1.
left() { local rest=$((BUDGET_S - (SECONDS - start))); echo $((rest < $1 ? (rest > 1 ? rest : 1) : $1)); }
step() { echo "== $1 ($(date -u +%T), $((SECONDS - start)) s in)"; }

step devices
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia_smi.csv" 2>&1
"$PY" -c 'import jax; print(jax.__version__, jax.devices())' | tee "$OUT/devices.txt"
# The fused-attention field may not exist in this tree yet: then only 'auto' (XLA) is measured.
if "$PY" -c 'from configs.common import base_config; assert "attention" in base_config().model' \
    2>/dev/null; then ATTENTION=xla,cudnn; else ATTENTION=auto; fi

step 'attention: cudnn vs xla'
timeout "$(left 90)" "$PY" -m benchmarks.gpu_checks attention $SMOKE_FLAG \
    --out "$OUT/gpu_checks_attention.json"

step "benchmark bf16 ($ATTENTION)"
timeout "$(left 240)" "$PY" -m benchmarks.accelerator --models b32,b16,l14 --dtypes bfloat16 \
    --attention "$ATTENTION" --steps 5 --row_timeout 120 $SMOKE_FLAG \
    --out "$OUT/accelerator_bf16.json"

step 'determinism'
XLA_FLAGS=--xla_gpu_deterministic_ops=true timeout "$(left 60)" "$PY" -m benchmarks.gpu_checks \
    determinism $SMOKE_FLAG --out "$OUT/determinism_flag.json"
timeout "$(left 60)" "$PY" -m benchmarks.gpu_checks determinism $SMOKE_FLAG \
    --out "$OUT/determinism_default.json"

step 'benchmark fp32 (xla)'
timeout "$(left 240)" "$PY" -m benchmarks.accelerator --models b32,b16,l14 --dtypes float32 \
    --attention "${ATTENTION%%,*}" --steps 5 --row_timeout 120 $SMOKE_FLAG \
    --out "$OUT/accelerator_fp32.json"

step done
ls -l "$OUT"

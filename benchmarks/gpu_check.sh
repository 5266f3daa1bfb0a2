#!/usr/bin/env bash
# The GPU measurements, most important first, each section under its own time limit so a slow one
# cannot eat the rest; everything is tee'd to $OUT/gpu_check$PART.log. Each part is meant as one
# device command; the limits of its sections add up to the most it can take.
#   part 1 (limits 845 s): the scanned fp32/bf16 rows and the tutorial loop; the 20-epoch
#     reference run cold and warm (compile cache); A/Bs in one process of model and training
#     variants (benchmarks/ab_variants_gpu.py); the reference run with one checkpoint; the while
#     loop in a CUDA graph; a profile with the fusions named; no autotuning (compile time).
#   part 2 (limits 300 s, PART=2): threefry's kernel lowering checked for the same bits and
#     against XLA ops; --deterministic checked for bit-identical runs in two processes; the
#     reference run cold and warm again (use it after a change to the CLI's start-up or epoch loop).
#   part 3 (limits 340 s, PART=3): the remaining harness rows (torch_device_data, torch_compile,
#     jitted steps); a profile of the bf16 step.
#   part 4 (limits 360 s, PART=4): the "xla" kernel set against models.py's plain flax layers
#     (--kernels xla / flax), A/B in one process, fp32 and bf16; a profile of the flax step.
# Logs of earlier runs are in benchmarks/results/ (NOTES.md says which code ran).
#   OUT=/tmp/o DEVICE=cpu STEPS=2 REF_STEPS=2 REF_EPOCHS=2 PROFILE_STEPS=1 AB_STEPS=1 AB_ROUNDS=2 AB_BATCH=8 \
#     FP32=jax_steps_fp32 BF16=jax_steps_bf16 DATA_DIR=/work/shared/data/mnist bash benchmarks/gpu_check.sh
#   is a dry run on the CPU.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
PY=${PY:-python3}
OUT=${OUT:?set OUT}
PART=${PART:-1}
DEVICE=${DEVICE:-gpu}
STEPS=${STEPS:-600}
REF_EPOCHS=${REF_EPOCHS:-20}
REF_STEPS=${REF_STEPS:-600}
PROFILE_STEPS=${PROFILE_STEPS:-100}
AB_STEPS=${AB_STEPS:-100} AB_ROUNDS=${AB_ROUNDS:-10}
DATA_DIR=${DATA_DIR:-.gpu/mnist}
FP32=${FP32:-jax_scan_fp32} BF16=${BF16:-jax_scan_bf16}   # the dry run on CPU: jax_steps_*
LOG=$OUT/gpu_check$PART.log
loop=$([ "$DEVICE" = gpu ] && echo scan || echo steps)   # as the CLI's --loop auto
mkdir -p "$OUT/json"
T0=$(date +%s)
section() { echo; echo "=== [$(( $(date +%s) - T0 )) s] $*" | tee -a "$LOG"; }
run() { local limit=$1; shift; timeout "$limit" "$@" 2>&1 | tee -a "$LOG"; echo "(exit ${PIPESTATUS[0]})" | tee -a "$LOG"; }
bench() { local limit=$1 name=$2 variants=$3; shift 3   # 2 epochs: the first compiles, the second is timed
  run "$limit" env "$@" $PY -m benchmarks.bench --device "$DEVICE" --epochs 2 --steps-per-epoch "$STEPS" \
    --data-dir "$DATA_DIR" --variants "$variants" ${name:+--tag "$name"} --json "$OUT/json/$PART-${name:-harness}.json"; }
ab() { local limit=$1 variants=$2; shift 2   # in one process, $AB_STEPS steps per call, paired rounds
  run "$limit" $PY -m benchmarks.ab_step "$variants" --loop $loop --steps "$AB_STEPS" --rounds "$AB_ROUNDS" \
    --batch-size "${AB_BATCH:-100}" "$@"; }
reference_runs() { local limit=$1; rm -rf /tmp/dcgan_cache   # the CLI from process start, cold then warm cache
  for start in cold warm; do
    section "reference run, $REF_EPOCHS epochs, compile cache $start"
    run "$limit" $PY -m benchmarks.reference_run /tmp/dcgan_cache --timeline --preset reference --data-dir "$DATA_DIR" \
      --epochs "$REF_EPOCHS" --steps-per-epoch "$REF_STEPS" --no-progress --overwrite --out /tmp/ref_$start
  done; }

deterministic() { section "--deterministic: two processes, same bits?"
  for i in 1 2; do
    run 50 $PY -m experiments.train --preset reference --data-dir "$DATA_DIR" --epochs 1 --steps-per-epoch "${DET_STEPS:-200}" \
      --no-progress --overwrite --compile-cache off --deterministic --out /tmp/det_$i
  done
  sha256sum /tmp/det_*/generator.msgpack /tmp/det_*/discriminator.msgpack 2>&1 | tee -a "$LOG"; }

section "environment (part $PART)"
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,utilization.gpu --format=csv 2>&1
  $PY -c "import jax, flax, optax, torch; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__)"
  git log --oneline -1 2>/dev/null; git status --short 2>/dev/null | head; nproc; } 2>&1 | tee -a "$LOG"

if [ "$PART" = 4 ]; then
  for dtype in float32 bfloat16; do
    section "A/B in one process: --kernels xla against flax, $dtype ($AB_STEPS steps per call)"
    ab 150 benchmarks/ab_variants_kernels.py --dtype $dtype
  done
  section "profile: top ops of the fp32 step with the plain flax layers, fusions outside CUDA graphs"
  run 60 env XLA_FLAGS=--xla_gpu_enable_command_buffer= $PY -m benchmarks.profile --loop $loop --kernels flax \
    --steps "$PROFILE_STEPS" --top 50
  section "done"; exit 0
fi

if [ "$PART" = 3 ]; then
  section "harness, remaining rows"
  bench 280 "" torch_device_data,torch_compile,jax_steps_fp32,jax_steps_bf16
  section "profile: top ops of the scanned bf16 step, fusions outside CUDA graphs"
  run 60 env XLA_FLAGS=--xla_gpu_enable_command_buffer= $PY -m benchmarks.profile --loop $loop --dtype bfloat16 \
    --steps "$PROFILE_STEPS" --top 50
  (cd "$OUT" && tar czf json3.tgz json && rm -r json)
  section "done"; exit 0
fi

if [ "$PART" = 2 ]; then
  section "threefry as one kernel: the same bits as the XLA lowering?"
  for flag in 0 1; do
    $PY -c "
import sys, hashlib, jax, numpy as np
jax.config.update('jax_threefry_gpu_kernel_lowering', bool($flag))
k = jax.random.key(7)
out = [jax.random.normal(k, (4, 4, 256, 128)), jax.random.uniform(jax.random.fold_in(k, 3), (100, 10)),
       jax.random.permutation(jax.random.split(k)[1], 60000), jax.random.bits(k, (1001,))]
print('kernel=$flag', hashlib.sha256(b''.join(np.asarray(o).tobytes() for o in out)).hexdigest())
" 2>&1 | tee -a "$LOG"
  done
  section "A/B, compile time: threefry as XLA ops (not one kernel)"
  bench 50 threefry_xla_ops $FP32 DCGAN_THREEFRY_KERNEL=0
  deterministic
  reference_runs 75
  section "done"; exit 0
fi

section "harness: scanned fp32 and bf16, the tutorial loop (2 epochs of $STEPS steps)"
bench 150 "" $FP32,$BF16,torch_tutorial

reference_runs 100
# The trained run without its checkpoints: evaluate / latent_scale / figures work from it anywhere.
(cd /tmp && tar czf "$OUT/ref_warm.tgz" ref_warm/config.json ref_warm/metrics.jsonl ref_warm/step_metrics.npz \
  ref_warm/losses.png ref_warm/generator.msgpack ref_warm/discriminator.msgpack ref_warm/samples/epoch_$(printf %03d "$REF_EPOCHS").png) 2>&1 | tee -a "$LOG"

section "A/B in one process: benchmarks/ab_variants_gpu.py (fp32, $AB_STEPS steps per call)"
ab 225 benchmarks/ab_variants_gpu.py

# Do the checkpoints' transfers slow the overlapped epochs? (--timeline: per epoch, how long the
# loop waited for the device and what the host did meanwhile)
section "reference run, warm cache, one checkpoint (the last epoch's) instead of one per epoch"
run 100 $PY -m benchmarks.reference_run /tmp/dcgan_cache --timeline --preset reference --data-dir "$DATA_DIR" \
  --epochs "$REF_EPOCHS" --steps-per-epoch "$REF_STEPS" --no-progress --overwrite --out /tmp/ref_ckpt_last \
  --checkpoint-every "$REF_EPOCHS"

section "A/B: the scan's while loop inside the CUDA graph (no host round trip per step)"
bench 50 while_in_cuda_graph $FP32 XLA_FLAGS=--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL

# Command buffers off: each fusion is its own kernel, named in the trace (inside a CUDA graph the
# profile sees only "command_buffer_N").
section "profile: top ops of the scanned fp32 step, fusions outside CUDA graphs"
run 60 env XLA_FLAGS=--xla_gpu_enable_command_buffer= $PY -m benchmarks.profile --loop $loop --steps "$PROFILE_STEPS" --top 50

section "A/B, compile time: no autotuning"
bench 60 autotune_0 $FP32 XLA_FLAGS=--xla_gpu_autotune_level=0
(cd "$OUT" && tar czf json1.tgz json && rm -r json)
section "done"

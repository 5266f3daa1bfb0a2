#!/usr/bin/env bash
# One device session on a GPU (~10 min of device time on an H100: the 7-variant harness alone
# takes ~6 min): the full harness, the 20-epoch reference run cold and warm (compile
# cache), a profile of the scanned step, and A/B variants, most important first. Everything is
# tee'd to $OUT/session.log; each section has its own time limit so a slow one cannot eat the rest.
#   cd .gpu/code && bash benchmarks/gpu_session.sh                        # on the device
#   OUT=/tmp/o DEVICE=cpu EPOCHS=2 STEPS=1 REF_STEPS=1 REF_EPOCHS=2 PROFILE_STEPS=1 \
#     BENCH_VARIANTS=torch_tutorial,jax_steps_fp32 AB_VARIANT=jax_steps_fp32 \
#     DATA_DIR=/work/shared/data/mnist bash benchmarks/gpu_session.sh      # dry run on CPU
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
PY=${PY:-python3}
OUT=${OUT:?set OUT}
DEVICE=${DEVICE:-gpu}
EPOCHS=${EPOCHS:-3}
STEPS=${STEPS:-600}
REF_EPOCHS=${REF_EPOCHS:-20}
REF_STEPS=${REF_STEPS:-600}
PROFILE_STEPS=${PROFILE_STEPS:-100}
AB_VARIANT=${AB_VARIANT:-jax_scan_fp32}
DATA_DIR=${DATA_DIR:-../mnist}
LOG=$OUT/session.log
T0=$(date +%s)
section() { echo; echo "=== [$(( $(date +%s) - T0 )) s] $*" | tee -a "$LOG"; }
run() { local limit=$1; shift; timeout "$limit" "$@" 2>&1 | tee -a "$LOG"; echo "(exit ${PIPESTATUS[0]})" | tee -a "$LOG"; }

section "environment"
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,utilization.gpu --format=csv 2>&1
  $PY -c "import jax, flax, optax, torch; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__)"
  nproc; } 2>&1 | tee -a "$LOG"

section "harness: all variants, $EPOCHS epochs of $STEPS steps"
run 400 $PY -m benchmarks.bench --device "$DEVICE" --epochs "$EPOCHS" --steps-per-epoch "$STEPS" \
  --data-dir "$DATA_DIR" --json "$OUT/bench.json" ${BENCH_VARIANTS:+--variants "$BENCH_VARIANTS"}

REF_ARGS=(--preset reference --data-dir "$DATA_DIR" --epochs "$REF_EPOCHS" --steps-per-epoch "$REF_STEPS" --no-progress --overwrite)
rm -rf /tmp/dcgan_cache
for start in cold warm; do
  section "reference run, $REF_EPOCHS epochs, compile cache $start"
  run 110 $PY -m benchmarks.reference_run /tmp/dcgan_cache "${REF_ARGS[@]}" --out /tmp/ref_$start
done
ls /tmp/ref_warm /tmp/ref_warm/samples 2>&1 | tail -4 | tee -a "$LOG"
# The trained run without its checkpoints (~20 MB): experiments.evaluate / latent_scale / figures
# then work from a real 20-epoch generator on any machine.
mkdir -p "$OUT/ref_warm" && (cd /tmp/ref_warm && cp -r config.json metrics.jsonl step_metrics.npz \
  losses.png samples generator.msgpack discriminator.msgpack "$OUT/ref_warm/") 2>&1 | tee -a "$LOG"

section "profile: top ops of the scanned fp32 step"
loop=$([ "$DEVICE" = gpu ] && echo scan || echo steps)
run 70 $PY -m benchmarks.profile --loop $loop --steps "$PROFILE_STEPS" --top 30

section "A/B: $AB_VARIANT, 2 epochs each"
ab() { local name=$1 flags=$2; shift 2
  run 60 env XLA_FLAGS="$flags" $PY -m benchmarks.bench --device "$DEVICE" --epochs 2 --steps-per-epoch "$STEPS" \
    --data-dir "$DATA_DIR" --variants "$AB_VARIANT" --tag "$name" --json "$OUT/ab_$name.json" "$@"; }
ab force_conv_nhwc --xla_gpu_force_conv_nhwc=true

section "profile: bf16"
run 60 $PY -m benchmarks.profile --loop $loop --steps "$PROFILE_STEPS" --top 12 --dtype bfloat16

section "A/B: compile time without autotuning"
ab autotune_0 --xla_gpu_autotune_level=0
section "done"

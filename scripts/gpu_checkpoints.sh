#!/usr/bin/env bash
# The book's diffusion models on one GPU in about 10 minutes, packed to bring back to a CPU machine.
#
#   bash scripts/gpu_checkpoints.sh             # on the GPU machine (Fashion-MNIST there: $DIFFUSION_DATA)
#   bash scripts/unpack_gpu_checkpoints.sh DIR  # back here: checkpoints/, samples, benchmark samples
#
# The recipes are the CPU configs (configs/fashion_*.yaml) with a larger batch (256), EMA 0.9995 and a
# time budget instead of a step count (max_minutes: training stops with a checkpoint at the first log
# step after it; the model card records the steps reached). Everything shares the one GPU: the linear and
# cosine pixel models train side by side with the VAE, then the latent DDPM and the latent CFG model
# (bf16 autocast and channels_last: precision auto). The classifier is not retrained: it is the
# instrument every model is scored with. Then, on the GPU:
# - each model is shipped (EMA weights, fp16 but the VAE) with its card into $RUNS/ship;
# - scripts/measure_model.py draws $N samples per model (DDIM-50, the shipped weights), classifies them
#   and runs the fp16 check; the samples are kept (uint8) for FID here, where the Inception weights are;
# - benchmarks/efficiency.py times every sampler on CUDA (peak memory from max_memory_allocated) and
#   draws its quality samples (FID of DDPM-1000 and DDIM-250 too, which a CPU cannot afford).
# Everything lands in $PACK as at most 8 files. Each step's output: $PACK/log.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # no install on the GPU machine: the scripts import this checkout
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
RUNS=${RUNS:-runs/gpu}
PACK=${PACK:-$RUNS/pack}
N=${N:-10000}                      # samples per model (FID-10k)
PIXEL_MINUTES=${PIXEL_MINUTES:-4}
VAE_MINUTES=${VAE_MINUTES:-1}
LATENT_MINUTES=${LATENT_MINUTES:-2.25}
TIMING_BATCH=${TIMING_BATCH:-64}
FP16_N=${FP16_N:-100}              # samples of the fp16 check
N_FID=${N_FID:-2000}               # efficiency study: samples per arm (FID-2k; KID on the first N_KID)
N_KID=${N_KID:-500}
BUDGET=${BUDGET:-560}              # seconds for the whole script: the last steps are cut to pack in time
EXTRA=${EXTRA:-}                   # more --set overrides for every run (a dry run: "max_steps=2 batch_size=8")
mkdir -p "$RUNS" "$PACK"
LOG=$PACK/log.txt
export PYTHONUNBUFFERED=1

if [ "$DEVICE" = cpu ]; then
    HARDWARE="$(nproc) CPU cores"
else
    HARDWARE="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1), bf16 autocast, channels_last; the runs share the GPU"
fi
GPU_SET="device=$DEVICE num_threads=null batch_size=256 ema_decay=0.9995 max_steps=100000 checkpoint_every=1000 keep_last=1 sample_every=0 log_every=100 progress=false"

train() {  # train <config> <output dir> <minutes> [more overrides]: one run, its output in runs/gpu/<name>.log
    local config=$1 out=$2 minutes=$3
    shift 3
    local cmd=(-m diffusion_lib train --config "configs/$config.yaml" --set $GPU_SET output_dir="$out"
               max_minutes="$minutes" "$@" $EXTRA)
    echo "$(date +%T) start $config: python ${cmd[*]}" >> "$LOG"
    timeout "$(awk "BEGIN {print int($minutes * 60 + 120)}")" "$PYTHON" "${cmd[@]}" > "$out.log" 2>&1
    local rc=$?
    echo "$(date +%T) end $config (exit $rc): $(tail -n 1 "$out.log")" >> "$LOG"
    echo "python ${cmd[*]}" > "$out.command"
}

last() { ls "$1"/checkpoints/ckpt_*.pt 2>/dev/null | sort | tail -n 1; }
# Preflight (a minute): two training steps, shipping and sampling, so a broken setup fails fast.
"$PYTHON" -m diffusion_lib train --config configs/fashion_cpu.yaml --set $GPU_SET output_dir="$RUNS/preflight" \
    max_steps=2 log_every=1 $EXTRA > "$RUNS/preflight.log" 2>&1 \
  && "$PYTHON" scripts/ship_model.py fashion_ddpm_linear "$(last "$RUNS/preflight")" --fp16 \
    --out-dir "$RUNS/preflight/ship" --command preflight >> "$RUNS/preflight.log" 2>&1 \
  && DIFFUSION_CHECKPOINTS=$RUNS/preflight/ship "$PYTHON" scripts/measure_model.py fashion_ddpm_linear \
    --device "$DEVICE" --n 8 >> "$RUNS/preflight.log" 2>&1
status=$?
echo "$(date +%T) preflight (exit $status)" >> "$LOG"
if [ "$status" != 0 ]; then
    tail -n 40 "$RUNS/preflight.log"
    exit 1
fi

train fashion_cpu "$RUNS/fashion_linear" "$PIXEL_MINUTES" & linear=$!
train fashion_cpu_cosine "$RUNS/fashion_cosine" "$PIXEL_MINUTES" & cosine=$!
(
    train fashion_vae "$RUNS/fashion_vae" "$VAE_MINUTES"
    train fashion_latent "$RUNS/fashion_latent" "$LATENT_MINUTES" vae="$RUNS/fashion_vae/vae.pt" &
    train fashion_latent_cfg "$RUNS/fashion_latent_cfg" "$LATENT_MINUTES" vae="$RUNS/fashion_vae/vae.pt"
    wait
) & latent=$!
wait "$linear" "$cosine" "$latent"

ship() {  # ship <name> <file> <run> [--fp16]
    [ -f "$2" ] || { echo "$(date +%T) no $2: $1 not shipped" >> "$LOG"; return 1; }
    "$PYTHON" scripts/ship_model.py "$1" "$2" "${@:4}" --out-dir "$RUNS/ship" --hardware "$HARDWARE" \
        --command "$(cat "$3.command") (scripts/gpu_checkpoints.sh)" >> "$LOG" 2>&1
}
ship fashion_vae "$RUNS/fashion_vae/vae.pt" "$RUNS/fashion_vae"
ship fashion_ddpm_linear "$(last "$RUNS/fashion_linear")" "$RUNS/fashion_linear" --fp16
ship fashion_ddpm_cosine "$(last "$RUNS/fashion_cosine")" "$RUNS/fashion_cosine" --fp16
ship fashion_latent_ddpm "$(last "$RUNS/fashion_latent")" "$RUNS/fashion_latent" --fp16
ship fashion_cfg "$(last "$RUNS/fashion_latent_cfg")" "$RUNS/fashion_latent_cfg" --fp16
echo "$(date +%T) shipped" >> "$LOG"

left() {  # seconds left, keeping $1 for what comes after (at least 1: timeout 0 would mean none)
    local seconds=$(( BUDGET - SECONDS - ${1:-0} ))
    echo $(( seconds > 1 ? seconds : 1 ))
}

export DIFFUSION_CHECKPOINTS=$RUNS/ship  # the new models; the classifier comes from checkpoints/
mkdir -p "$RUNS/samples"
measure() {  # measure <name> <run>
    timeout "$(left 90)" "$PYTHON" scripts/measure_model.py "$1" --device "$DEVICE" --n "$N" --fp32 "$(last "$2")" \
        --fp16-n "$FP16_N" --save-samples "$RUNS/samples/$1.pt" > "$RUNS/samples/$1.log" 2>&1
    local rc=$?
    echo "$(date +%T) measured $1 (exit $rc)" >> "$LOG"
}
measure fashion_ddpm_linear "$RUNS/fashion_linear" &
measure fashion_ddpm_cosine "$RUNS/fashion_cosine" &
measure fashion_latent_ddpm "$RUNS/fashion_latent" &
measure fashion_cfg "$RUNS/fashion_latent_cfg" &
EFFICIENCY=(benchmarks/efficiency.py --checkpoint "$RUNS/ship/fashion_ddpm_linear.pt" --clip-x0 --device "$DEVICE"
            --sample-batch 1000 --n-fid "$N_FID" --n-kid "$N_KID" --work-dir "$RUNS/efficiency" --out "$RUNS/efficiency.json")
timeout "$(left 90)" "$PYTHON" "${EFFICIENCY[@]}" --parts samples >> "$LOG" 2>&1
wait
echo "$(date +%T) samples drawn" >> "$LOG"
# Timing last, alone on the GPU.
timeout "$(left 30)" "$PYTHON" "${EFFICIENCY[@]}" --parts timing --batch "$TIMING_BATCH" --repeats 3 >> "$LOG" 2>&1
echo "$(date +%T) timed" >> "$LOG"

# At most 8 files of at most 16 MB each come back.
pack() {  # pack <archive> <files...>: a gzip'd tar, paths relative to the repository
    local archive=$1
    shift
    tar -czf "$PACK/$archive" "$@" 2>> "$LOG"
}
pack models_pixel.tar.gz "$RUNS"/ship/fashion_ddpm_*
pack models_latent.tar.gz "$RUNS"/ship/fashion_vae.* "$RUNS"/ship/fashion_latent_ddpm.*
pack models_cfg.tar.gz "$RUNS"/ship/fashion_cfg.* "$RUNS"/*.log "$RUNS"/*.command "$RUNS"/*/log.csv \
    "$RUNS"/samples/*.log "$RUNS"/efficiency.json
pack samples_pixel.tar.gz "$RUNS"/samples/fashion_ddpm_*.pt
pack samples_latent.tar.gz "$RUNS"/samples/fashion_latent_ddpm.pt "$RUNS"/samples/fashion_cfg.pt
pack efficiency_samples.tar.gz "$RUNS"/efficiency
ls -l "$PACK" >> "$LOG"
cat "$LOG"

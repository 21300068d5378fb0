#!/usr/bin/env bash
# Train the book's models with `python -m diffusion_lib train`, ship them into checkpoints/ with their
# model cards, and measure them (scripts/measure_model.py). `make checkpoints` runs this.
#
#   bash scripts/train_checkpoints.sh              # 2 CPU cores: two lanes of one torch thread each
#   DEVICE=cuda bash scripts/train_checkpoints.sh  # one GPU: the same recipes one after another
#                                                  # (bf16 autocast and channels_last: precision auto)
#   FID=1 ...                                      # also FID-2k of every diffusion model (slow on a CPU)
#
# Every run resumes (--resume), so an interrupted call continues where it stopped and a finished run
# is not trained again. Time on 2 CPU cores: see configs/README.md (lane 1: classifier, linear,
# latent DDPM; lane 2: VAE, latent CFG, cosine). Logs: runs/logs/<config>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cpu}
mkdir -p runs/logs

if [ "$DEVICE" = cpu ]; then
    DEVICE_SET=(--set num_threads=1 device=cpu)
else
    DEVICE_SET=(--set num_threads=null device="$DEVICE")
fi

train() {  # train <config>: resume or start runs/<its output_dir>
    echo "train configs/$1.yaml (log: runs/logs/$1.log)"
    "$PYTHON" -m diffusion_lib train --config "configs/$1.yaml" "${DEVICE_SET[@]}" --resume > "runs/logs/$1.log" 2>&1
}

# About 2 h 40 min and 2 h 50 min on one core each, then chapter 11's flow-matching twin of fashion_cpu
# (about 1 h 55 min more on lane 1). Lane 1's latent DDPM needs lane 2's VAE, which is done about
# 1 h 30 min before lane 1 gets there (without it, training stops with an error naming it).
lane1() { train fashion_classifier && train fashion_cpu && train fashion_latent && train fashion_flow_cpu; }
lane2() { train fashion_vae && train fashion_latent_cfg && train fashion_cpu_cosine; }

if [ "$DEVICE" = cpu ]; then
    lane1 & first=$!
    lane2 & second=$!
    wait "$first"
    wait "$second"
else
    lane1
    lane2
fi

ship() {  # ship <name> <file> <config> [--fp16]
    "$PYTHON" scripts/ship_model.py "$1" "$2" "${@:4}" \
        --command "python -m diffusion_lib train --config configs/$3.yaml (scripts/train_checkpoints.sh, DEVICE=$DEVICE)"
}
last() { ls "$1"/checkpoints/ckpt_*.pt | sort | tail -n 1; }

ship fashion_classifier runs/fashion_classifier/classifier.pt fashion_classifier
ship fashion_vae runs/fashion_vae/vae.pt fashion_vae
ship fashion_ddpm_linear "$(last runs/fashion_cpu)" fashion_cpu --fp16
ship fashion_ddpm_cosine "$(last runs/fashion_cpu_cosine)" fashion_cpu_cosine --fp16
ship fashion_latent_ddpm "$(last runs/fashion_latent)" fashion_latent --fp16
ship fashion_cfg "$(last runs/fashion_latent_cfg)" fashion_latent_cfg --fp16
ship fashion_ddpm_cpu "$(last runs/fashion_cpu)" fashion_cpu --fp16  # chapter 11: a DDPM and a flow model
ship fashion_flow "$(last runs/fashion_flow_cpu)" fashion_flow_cpu --fp16  # trained alike

fid=()
[ "${FID:-0}" = 1 ] && fid=(--fid)
"$PYTHON" scripts/measure_model.py fashion_ddpm_linear --fp32 "$(last runs/fashion_cpu)" "${fid[@]}"
"$PYTHON" scripts/measure_model.py fashion_ddpm_cosine --fp32 "$(last runs/fashion_cpu_cosine)" "${fid[@]}"
"$PYTHON" scripts/measure_model.py fashion_latent_ddpm --fp32 "$(last runs/fashion_latent)" "${fid[@]}"
"$PYTHON" scripts/measure_model.py fashion_cfg --fp32 "$(last runs/fashion_latent_cfg)" "${fid[@]}"
"$PYTHON" scripts/measure_model.py fashion_ddpm_cpu --fp32 "$(last runs/fashion_cpu)" "${fid[@]}"
"$PYTHON" scripts/measure_model.py fashion_flow --fp32 "$(last runs/fashion_flow_cpu)" "${fid[@]}"
du -ch checkpoints/*.pt | tail -n 1

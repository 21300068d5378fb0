#!/usr/bin/env bash
# Bring what scripts/gpu_checkpoints.sh packed (its pack folder, copied back) into the repository: the
# models and cards into checkpoints/ (all, or the NAMEs given), their samples into runs/gpu/samples/, the
# efficiency study's samples into runs/gpu/efficiency/ and, when the linear model is among those copied,
# its CUDA timing into benchmarks/results/efficiency.json. Then score them here, where the FID Inception
# weights are (the quality part merges into the timing file):
#
#   python scripts/measure_model.py fashion_ddpm_linear --samples runs/gpu/samples/fashion_ddpm_linear.pt --fid
#   python benchmarks/efficiency.py --pretrained fashion_ddpm_linear --clip-x0 --parts quality \
#       --sample-batch 1000 --work-dir runs/gpu/efficiency --fid-max-nfe inf
set -euo pipefail
cd "$(dirname "$0")/.."
PACK=${1:?usage: bash scripts/unpack_gpu_checkpoints.sh PACK_FOLDER [NAME ...]}
shift
NAMES=("$@")
for archive in "$PACK"/*.tar.gz; do
    tar -xzf "$archive"
done
if [ ${#NAMES[@]} = 0 ]; then
    cp runs/gpu/ship/*.pt runs/gpu/ship/*.json checkpoints/
else
    for name in "${NAMES[@]}"; do
        cp "runs/gpu/ship/$name.pt" "runs/gpu/ship/$name.json" checkpoints/
    done
fi
"${PYTHON:-python3}" scripts/ship_model.py --manifest  # the package's list of the shipped files
if cmp -s runs/gpu/ship/fashion_ddpm_linear.pt checkpoints/fashion_ddpm_linear.pt; then
    cp runs/gpu/efficiency.json benchmarks/results/efficiency.json
fi
ls -l checkpoints/ runs/gpu/samples/

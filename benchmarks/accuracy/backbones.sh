#!/usr/bin/env bash
# Pretrained-backbone encoders (issue 12) with random initialisation, on one dataset's protocol at
# its config's budget, one after the other (nothing else should run on the machine meanwhile: the
# budgets are wall-clock). Depth 5 (the backbones' five strides), images on the [0, 1] scale (the
# backbone scales them inside the graph). Usage: benchmarks/accuracy/backbones.sh DATASET [PY] [WEIGHTS]
# WEIGHTS=imagenet measures the gain from ImageNet weights where they can be downloaded.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATASET=${1:?dataset: dsb2018-nuclei | camvid | ...}
PY=${2:-.venv/bin/python}
WEIGHTS=${3:-none}
for bb in efficientnetv2b0 mobilenetv3large resnet50v2 convnext_tiny; do
  "$PY" benchmarks/accuracy/run.py "$DATASET" --quiet --variant "bb-$bb-$WEIGHTS" \
    --set model.encoder=$bb --set model.encoder_weights=$WEIGHTS --set model.depth=5 \
    --set data.normalization=unit
done

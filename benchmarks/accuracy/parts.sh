#!/usr/bin/env bash
# The model-parts comparison (issue: encoders / decoders): every registered combination on one
# dataset's protocol at its config's budget, one after the other (nothing else should run on the
# machine meanwhile: the budgets are wall-clock). Usage: benchmarks/accuracy/parts.sh DATASET [PY]
set -euo pipefail
cd "$(dirname "$0")/../.."
DATASET=${1:?dataset: drive | dsb2018-nuclei | camvid | ...}
PY=${2:-.venv/bin/python}
run() { "$PY" benchmarks/accuracy/run.py "$DATASET" --quiet --variant "$@"; }
run parts-conv-unet          --set model.encoder=conv --set model.decoder=unet
run parts-resconv-unet       --set model.encoder=resconv
run parts-conv-unet-att      --set model.attention=true
run parts-conv-unetpp        --set model.decoder=unetpp
run parts-conv-unet3p        --set model.decoder=unet3p --set model.upsample=bilinear  # as the paper

#!/usr/bin/env bash
# The tabular task end to end on this machine: five hospitals train on their own patient rows (DP-SGD, threshold
# HE, signed lineage on a local devnet), the model is audited, quantized to int8 and deployed, and a device predicts
# from a CSV of raw rows and checks it for drift.
#
#   bash examples/breast_cancer/run.sh [OUT_DIR]      (about two minutes on two cores)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$(mkdir -p "${1:-breast-cancer-demo}" && cd "${1:-breast-cancer-demo}" && pwd)
DEVNET=(--devnet-dir "$OUT/devnet")
cd "$OUT"
trap 'fedproof devnet stop --data-dir "$OUT/devnet" >/dev/null 2>&1 || true' EXIT

# 1. what each hospital holds (one CSV each), a CSV of new patients, and the same rows from a mis-calibrated scanner
python "$HERE/write_hospital_csvs.py" csv --shifted

# 2. train: 5 hospitals, DP-SGD (epsilon <= 3 per hospital), threshold CKKS, every round recorded on the devnet;
#    then quantize to int8, publish under a signed manifest, record the deployment and promote it
fedproof simulate --task breast-cancer --clients 5 --rounds 10 --batch-size 32 --max-grad-norm 1.0 --lr 0.5 \
  --delta 1e-3 --run-dir runs --run-id bc "${DEVNET[@]}" --deploy

# 3. anyone can check the model file against the ledger: signed updates, co-signatures of the key holders
fedproof audit verify runs/bc/model.safetensors "${DEVNET[@]}"

# 4. a device: install the release (it re-derives the int8 artifact from the co-signed model itself), predict from
#    raw CSV rows, and test its inputs for drift against the signed profile
fedproof edge pull latest --install-dir device --trust devnet/trust.json
fedproof edge predict csv/patients.csv --install-dir device --monitor
fedproof edge predict csv/shifted.csv --install-dir device --monitor

#!/usr/bin/env bash
# Run HERE (with the registries reachable), before a device check: fetches the wheels palbert
# needs that the GPU machine's image lacks (it has torch, transformers, peft, safetensors,
# pytest and the rest of palbert's dependencies) into .device/whl, which git ignores and the
# device call carries. Pure-Python wheels, about 1 MB; none holds model weights: the device
# check uses random encoders of MiniLM's and bert-base's shapes (speed needs no trained weights,
# and MiniLM's 84 MB package is over the 64 MiB a call may carry).
#
#   bash bench/device/prepare.sh            # wheels for the device's Python 3.12
#   PYVER=3.11 bash bench/device/prepare.sh # for a dry run of check.sh on this machine
set -euo pipefail
cd "$(dirname "$0")/../.."
PYVER=${PYVER:-3.12}
rm -rf .device/whl && mkdir -p .device/whl
# Versions as in palbert's own environment; --no-deps: everything else is on the image.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
  --implementation cp --platform manylinux2014_x86_64 --platform any -d .device/whl \
  "datasets==5.2.0" "evaluate==0.4.6" "dill==0.4.1" "multiprocess==0.70.19" "sybil==10.1.0"
ls -l .device/whl
echo "now: run(command='bash bench/device/check.sh', carry=['.device'], timeout_s=540)"

#!/usr/bin/env bash
# Run THERE, on the GPU machine the device tool lends (after prepare.sh here):
#
#   run(command="bash bench/device/check.sh", carry=[".device"], timeout_s=540)
#
# One call, about 5 minutes: installs the carried wheels, runs the CUDA tests, then
# bench/bench_pal.py in fp16 autocast (speed, then peak memory) on random encoders of MiniLM's
# and bert-base's shapes. Everything it prints and writes lands in $OUT (raw JSON as in
# bench/results/). A dry run on a CPU machine, with PYVER=3.11 wheels:
#   DEVICE=cpu ROUNDS=1 ITERS=1 SHAPES=random:minilm:4x16 MEMORY_SHAPES=random:minilm:4x16 \
#     OUT=/tmp/out bash bench/device/check.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$(mktemp -d)}
DEVICE=${DEVICE:-cuda}
export PYTHONUNBUFFERED=1
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/check.log"; }

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/palbert-site .device/whl/*.whl || { echo "wheels did not install"; exit 1; }
export PYTHONPATH="$PWD:/tmp/palbert-site${PYTHONPATH:+:$PYTHONPATH}"

log "machine"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || true
  python3 -c "import torch, transformers, peft; print('torch', torch.__version__,
'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available(), 'transformers',
transformers.__version__, 'peft', peft.__version__)"
} 2>&1 | tee -a "$OUT/check.log"

log "CUDA tests (pytest -m cuda)"
timeout 180 python3 -m pytest -q -p no:cacheprovider -m cuda tests 2>&1 \
  | tee "$OUT/cuda-tests.log" | tail -n 5

SHAPES=${SHAPES:-"random:minilm:32x64 random:minilm:32x128 random:bert-base:16x64 random:bert-base:16x128 random:bert-base:32x128"}
MEMORY_SHAPES=${MEMORY_SHAPES:-"random:minilm:32x128 random:bert-base:16x128"}
log "speed: bench_pal.py --device $DEVICE ($SHAPES)"
timeout 240 python3 -m bench.bench_pal --device "$DEVICE" --no-compile --rounds "${ROUNDS:-5}" --iters "${ITERS:-10}" \
  --shapes $SHAPES --out "$OUT/pal-$DEVICE.json" > "$OUT/pal-$DEVICE.log" 2>&1
echo "rc=$?" >> "$OUT/pal-$DEVICE.log"; tail -n 40 "$OUT/pal-$DEVICE.log"

log "memory: bench_pal.py --memory --device $DEVICE"
timeout 150 python3 -m bench.bench_pal --device "$DEVICE" --memory \
  --shapes $MEMORY_SHAPES --out "$OUT/memory-$DEVICE.json" \
  > "$OUT/memory-$DEVICE.log" 2>&1
echo "rc=$?" >> "$OUT/memory-$DEVICE.log"; tail -n 15 "$OUT/memory-$DEVICE.log"
log "done: files in $OUT"

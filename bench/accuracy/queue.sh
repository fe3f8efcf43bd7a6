#!/usr/bin/env bash
# The accuracy run queue (issue 22): seeds 1 and 2 of the six rows the issue names, one row
# at a time at the lowest CPU priority, each finished JSON committed on the current branch.
# Resumable: rows already done (same budget, seed, tasks, data) are skipped.
#   nohup nice -n 19 bash bench/accuracy/queue.sh > /tmp/accuracy-queue.log 2>&1 &
# Pausing it (kill -STOP / -CONT on its process group) changes no result: nothing in a row
# reads the clock for a decision.
set -u
cd "$(dirname "$0")/../.."
ROWS=pal-frozen,peft-lora,pal-full-annealed,separate,pal-full,shared
for seed in 1 2; do
  for row in ${ROWS//,/ }; do
    python bench/accuracy/run.py all --only "$row" --seed "$seed" --skip-done --threads 2 \
      --no-progress
    f=bench/accuracy/results/seed-$seed/$row.json
    if [ -f "$f" ]; then
      for _ in 1 2 3 4 5; do  # the index may be locked by other git work for a moment
        git add "$f" && git commit -q -m "bench/accuracy: $row seed $seed ($(python -c \
          "import json;r=json.load(open('$f'));print(r['status'], round(r.get('dev_mean',0),4), r['wall_s'],'s')"))" \
          -- "$f" && break
        sleep 5
      done
    fi
  done
done

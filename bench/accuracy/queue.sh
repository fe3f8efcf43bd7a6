#!/usr/bin/env bash
# The accuracy run queue (issue 22): one run at a time at the lowest CPU priority, each
# finished JSON (a sweep trial, a row's choice, a seed) committed on the current branch. Resumable: trials and rows already done
# (same budget, seed, tasks, data and learning rate) are skipped.
#   1. the learning-rate sweep on the validation carve, row by row, the issue's six rows
#      first (frozen ones leading: their module lr is the one most likely to move), then the
#      others, so every row gets its three trials; each row's choice goes to choice.json;
#   2. seeds 0, 1 and 2 of the six rows at their chosen rates (seed 0 reruns only for a row
#      whose choice changed).
#   nohup nice -n 19 bash bench/accuracy/queue.sh > /tmp/accuracy-queue.log 2>&1 &
#   echo 19 > /proc/$!/autogroup   # with autogroup scheduling on, nice ranks only within a session
# Pausing it (kill -STOP / -CONT on its process group) changes no result: nothing in a run
# reads the clock for a decision.
set -uo pipefail
cd "$(dirname "$0")/../.."
stop() { echo "queue.sh: stopped: $1" >&2; exit 1; }  # a failed run is looked at, not skipped
SIX=pal-frozen,peft-lora,pal-full-annealed,separate,pal-full,shared
OTHERS=palbert-adapters,palbert-low-rank,adapterhub,shared-pcgrad

commit() {  # $1: the message; the index may be locked by other git work for a moment
  for _ in 1 2 3 4 5; do
    git add bench/accuracy/results || { sleep 5; continue; }
    git diff --cached --quiet -- bench/accuracy/results && return 0
    git commit -q -m "$1" -- bench/accuracy/results && return 0
    sleep 5
  done
}

for row in ${SIX//,/ } ${OTHERS//,/ }; do
  # trial by trial, each committed as it ends: a machine lost mid-row keeps what finished
  trials=$(python -m bench.accuracy.run sweep --only "$row" --dry-run | grep -- '--tune') ||
    stop "sweep --only $row --dry-run"
  while read -r cmd; do
    $cmd --skip-done --threads 2 --no-progress < /dev/null || stop "$cmd"
    commit "bench/accuracy: sweep trial ${cmd#python -m bench.accuracy.run } on the validation carve"
  done <<< "$trials"
  python -m bench.accuracy.run sweep --only "$row" --skip-done --threads 2 --no-progress ||
    stop "sweep --only $row"
  commit "bench/accuracy: $row's learning-rate choice from its sweep"
done
for seed in 0 1 2; do
  for row in ${SIX//,/ }; do
    python -m bench.accuracy.run all --only "$row" --seed "$seed" --skip-done --threads 2 \
      --no-progress || stop "all --only $row --seed $seed"
    commit "bench/accuracy: $row seed $seed at its chosen learning rate"
  done
done

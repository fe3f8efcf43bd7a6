#!/usr/bin/env bash
# The accuracy run queue (issue 22): one run at a time at the lowest CPU priority, each
# finished JSON (a sweep trial, a row's choice, a seed) committed on the current branch as
# it lands. Resumable: trials and seeds already done (same budget, seed, tasks, data and
# learning rate) are skipped. Row by row, so that whatever a session gets through is whole
# rows:
#   1. each of the issue's six rows (frozen ones leading: their module lr is the one most
#      likely to move): its learning-rate sweep on the validation carve (three trials, then
#      its choice in choice.json), then seeds 0, 1 and 2 at the chosen rate (seed 0 reruns
#      only where the choice changed);
#   2. the added-task measurement (add_task.py), as soon as the three rows whose rates it
#      trains at (add_task.RATE_ROW: pal-frozen, pal-full-annealed, separate) are chosen;
#   3. the other four rows' sweeps, so every row gets its three trials, each followed by its
#      seed 0 at the choice; then their seeds 1 and 2.
#   nohup nice -n 19 bash bench/accuracy/queue.sh > /tmp/accuracy-queue.log 2>&1 &
#   echo 19 > /proc/$!/autogroup   # with autogroup scheduling on, nice ranks only within a session
# Pausing it (kill -STOP / -CONT on its process group) changes no result: nothing in a run
# reads the clock for a decision.
set -uo pipefail
cd "$(dirname "$0")/../.."
stop() { echo "queue.sh: stopped: $1" >&2; exit 1; }  # a failed run is looked at, not skipped
# the issue's six rows, split where the added-task measurement has all it needs
SIX_FIRST="pal-frozen peft-lora pal-full-annealed separate"
SIX_THEN="pal-full shared"
OTHERS="palbert-adapters palbert-low-rank adapterhub shared-pcgrad"

commit() {  # $1: what ran; the index may be locked by other git work for a moment
  local files
  for _ in 1 2 3 4 5; do
    git add bench/accuracy/results || { sleep 5; continue; }
    git diff --cached --quiet -- bench/accuracy/results && return 0
    # the message names the files: a skipped run commits what an earlier, killed queue left
    files=$(git diff --cached --name-only -- bench/accuracy/results | sed 's|bench/accuracy/results/||')
    git commit -q -m "bench/accuracy: $1: ${files//$'\n'/, }" -- bench/accuracy/results && return 0
    sleep 5
  done
  echo "queue.sh: could not commit ($1); the JSON is on disk, commit it by hand" >&2
}

sweep_row() {  # $1: a row; its trials one by one (a machine lost mid-row keeps what ended)
  local trials cmd
  trials=$(python -m bench.accuracy.run sweep --only "$1" --dry-run | grep -- '--tune') ||
    stop "sweep --only $1 --dry-run"
  while read -r cmd; do
    $cmd --skip-done --threads 2 --no-progress < /dev/null || stop "$cmd"
    commit "sweep trial ${cmd#python -m bench.accuracy.run } on the validation carve" < /dev/null
  done <<< "$trials"
  python -m bench.accuracy.run sweep --only "$1" --skip-done --threads 2 --no-progress ||
    stop "sweep --only $1"
  commit "$1's learning-rate choice from its sweep"
}

seeds_row() {  # $1: a row; the seeds after it (default 0 1 2), each at the row's chosen rate
  local row=$1 seed
  shift
  (( $# )) || set -- 0 1 2
  for seed in "$@"; do
    python -m bench.accuracy.run all --only "$row" --seed "$seed" --skip-done --threads 2 \
      --no-progress < /dev/null || stop "all --only $row --seed $seed"
    commit "$row seed $seed at its chosen learning rate"
  done
}

for row in $SIX_FIRST; do
  sweep_row "$row"
  seeds_row "$row"
done
# the added-task measurement at the chosen rates of pal-frozen, pal-full-annealed and
# separate (it reruns only what those choices changed; 41 minutes alone from nothing)
python -m bench.accuracy.run add-task --skip-done --threads 2 --no-progress < /dev/null ||
  stop "add-task"
commit "add-task at the chosen learning rates"
for row in $SIX_THEN; do
  sweep_row "$row"
  seeds_row "$row"
done
# the other four: the sweep and seed 0 at the choice first, so every row of the table runs at
# a chosen rate, then their seeds 1 and 2
for row in $OTHERS; do
  sweep_row "$row"
  seeds_row "$row" 0
done
for row in $OTHERS; do
  seeds_row "$row" 1 2
done

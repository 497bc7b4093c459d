#!/bin/sh
# The sweeps behind docs/results.md (resumable: finished points in the results directories are skipped).
#   sh docs/data/sim_sweep.sh [RESULTS_DIR=/work/simruns]   (from the repo root; one worker, nice 10)
# then: python -m mfs.sim report --data RESULTS_DIR/paper RESULTS_DIR/reduced
# Reduced sweep: per-model load grids (fractions of the balanced-compute capacity) around each model's
# knee; seed 1 of every case first, then MFS and Karuna for seeds 2-3, then fair and the bound, then
# the agent workload, then SJF/EDF. Paper scale: DBRX / conversation at rates 0.7 (the paper's) and 0.5.
OUT=${1:-/work/simruns}
PY=${PYTHON:-.venv/bin/python}
S="nice -n 10 $PY -m mfs.sim sweep --jobs 1"
P="--models dbrx --workloads conversation --schedulers mfs,karuna,fair --servers 256 --warmup 512 --measured 1024 --out $OUT/paper"
$S $P --rates 0.7 --seeds 1,2,3
$S $P --rates 0.5 --seeds 1,2,3
C="--servers 32 --warmup 128 --measured 256 --out $OUT/reduced"
grid() {
  case $1 in mixtral-8x22b|grok-2) echo 0.2,0.3,0.4 ;; dbrx) echo 0.1,0.2,0.3 ;; qwen3-coder) echo 0.05,0.1,0.2 ;; esac
}
M="mixtral-8x22b grok-2 dbrx qwen3-coder"
for W in conversation agent; do
  for m in $M; do $S --workloads $W --models $m --loads $(grid $m) $C --seeds 1 --schedulers mfs,karuna,fair; done
  for s in 2 3; do for m in $M; do $S --workloads $W --models $m --loads $(grid $m) $C --seeds $s --schedulers mfs,karuna --no-bound; done; done
  for s in 2 3; do for m in $M; do $S --workloads $W --models $m --loads $(grid $m) $C --seeds $s --schedulers fair; done; done
done
for m in $M; do $S --workloads conversation,agent --models $m --loads $(grid $m) $C --seeds 1,2,3 --schedulers sjf,edf --no-bound; done

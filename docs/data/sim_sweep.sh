#!/bin/sh
# The sweeps behind docs/results.md (resumable: finished points in the results directories are skipped).
#   sh docs/data/sim_sweep.sh [RESULTS_DIR=/work/simruns]   (from the repo root; one worker, nice 10)
# then: python -m mfs.sim report --data RESULTS_DIR/paper RESULTS_DIR/reduced
# Reduced sweep: per-model load grids (fractions of the balanced-compute capacity) around each model's
# knee; seed 1 of every case first, then MFS and Karuna for seeds 2-3, then fair and the bound, then
# the agent workload, then SJF/EDF. Paper scale first (below). JOBS=2 uses two worker processes.
OUT=${1:-/work/simruns}
PY=${PYTHON:-.venv/bin/python}
S="nice -n 10 $PY -m mfs.sim sweep --jobs ${JOBS:-1}"
P="--servers 256 --warmup 512 --measured 1024 --out $OUT/paper"
# Paper scale (256 servers, 512 + 1024 requests). DBRX / conversation at the paper's rate 0.7, 0.5 and 0.37:
$S $P --models dbrx --workloads conversation --schedulers mfs,karuna,fair --rates 0.7,0.5,0.37 --seeds 1,2,3  # 0.37: fair's knee lies below 0.5
# Every other case: the rates were found with fair sharing and seed 1, stepping by 1.35x from the
# 32-server knee until fair met <= 90 % at one rate and > 90 % at another ("explore" = fair only);
# seed 1 of MFS and Karuna at the last rate above 90 % and the next one or two; seeds 2-3 at the
# two rates that bracket fair's 90 % (the second is the high-load row of docs/results.md), and
# the no-network bound there.
pcase() {  # model workload explore seed1 seeds23
  $S $P --models $1 --workloads $2 --schedulers fair --rates $3 --seeds 1 --no-bound
  $S $P --models $1 --workloads $2 --schedulers mfs,karuna,fair --rates $4 --seeds 1 --no-bound
  $S $P --models $1 --workloads $2 --schedulers mfs,karuna,fair --rates $5 --seeds 1,2,3
}
pcase mixtral-8x22b conversation 0.426 0.575,0.777,1.05 0.575,0.777
pcase grok-2 conversation 0.216 0.292,0.394,0.532 0.292,0.394
pcase qwen3-coder conversation 0.0576 0.0778,0.105,0.142 0.0778,0.105
pcase dbrx agent 0.705 0.952,1.29,1.74 0.952,1.29
pcase mixtral-8x22b agent 1.14 1.54,2.08,2.81 1.54,2.08
pcase grok-2 agent 0.545 0.736,0.994,1.34 0.736,0.994
# qwen3-coder / agent (a point costs ~100 s CPU, 3x the others): seeds 2-3 at its high-load rate only;
# the last line gives its sustainable rate three seeds too
pcase qwen3-coder agent 0.232 0.232,0.313 0.313
$S $P --models qwen3-coder --workloads agent --schedulers mfs,karuna,fair --rates 0.232 --seeds 1,2,3
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

#!/usr/bin/env bash
# Ablation: the vote, at the exact budget (every run prunes the same number of dimensions, so the runs compare).
# (1) the threshold: the fraction k/T of the T profiled tasks that must keep a dimension, k = 1..T (1/T = budgeted
# union, T/T = budgeted intersection), T taken from the task mix (tasks=..., tasks.names=[...] or TASKS="a b c");
# (2) the other merge rules. vote.exact_budget=false (the achieved sparsity is whatever the vote gives) can be added
# as an argument; a threshold that then keeps no dimension of some layer fails that job with one line.
source "$(dirname "$0")/_common.sh"
read -r -a MIX <<< "$(task_mix)"
T=${#MIX[@]}
THRESHOLDS=$("$PYTHON" -c 'import sys; t = int(sys.argv[1]); print(",".join(f"{k / t:.6f}" for k in range(1, t + 1)))' "$T")
sweep threshold vote.method=majority "vote.threshold=$THRESHOLDS"
sweep merge vote.method=vote_count,mean_score,max_score,borda
report_hint

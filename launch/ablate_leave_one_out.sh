#!/usr/bin/env bash
# Ablation: leave one task out of the profiling mix and evaluate on the whole mix; one job per held-out task, in one
# sweep (each job's tasks.names is a list: Hydra sweeps over lists as `tasks.names=[a,b],[a,c],[b,c]`).
# The mix: TASKS="a b c", or tasks.names=[...] / tasks=GROUP among the arguments; default paper7.
source "$(dirname "$0")/_common.sh"
read -r -a mix <<< "$(task_mix)"
drop_user_keys tasks.names eval.tasks
all="$(IFS=,; echo "${mix[*]}")"
choices=()
for held in "${mix[@]}"; do
  rest=()
  for t in "${mix[@]}"; do [[ "$t" == "$held" ]] || rest+=("$t"); done
  choices+=("[$(IFS=,; echo "${rest[*]}")]")
done
sweep "" "tasks.names=$(IFS=,; echo "${choices[*]}")" "eval.tasks=[$all]"
report_hint

#!/usr/bin/env bash
# Profile first, then fan out. (1) stage=profile fills the profile cache: one job per (model, task), plus one job per
# model for the pooled calibration set of method=generic, plus one dense evaluation per model; (2) the real sweep,
# whose jobs then all hit the caches.
# Each step waits for its jobs (the submitit launchers block until a sweep ends), so run this in tmux or screen.
#   SWEEP=paper_main.sh   the launcher to run afterwards (any script in launch/)
# Arguments go to both steps; model=... and the calibration keys (calib.*, seed, prune.target, cache_dir: all part of
# the profile cache key) must be the same in both, so pass them here. Keys that do not change a profile (sparsity,
# method, scoring, vote.*, eval.*, prune.scope, ...) only reach step (2). Default models: gemma2_2b,gemma2_9b.
# The mix: TASKS="a b c", or tasks.names=[...] / tasks=GROUP among the arguments; default paper7.
source "$(dirname "$0")/_common.sh"
read -r -a mix <<< "$(task_mix)"
singles=()
for t in "${mix[@]}"; do singles+=("[$t]"); done
all_args=(${USER_ARGS[@]+"${USER_ARGS[@]}"})
drop_user_keys sparsity method scoring 'vote.*' 'eval.*' prune.scope prune.min_keep prune.multiple_of prune.save \
  tasks.names
sweep profile/per_task stage=profile model=gemma2_2b,gemma2_9b "tasks.names=$(IFS=,; echo "${singles[*]}")"
sweep profile/generic stage=profile model=gemma2_2b,gemma2_9b method=generic "tasks.names=[$(IFS=,; echo "${mix[*]}")]"
# The dense model's evaluation, once per model (method=random needs no profile; the eval.* keys stay, they are part
# of the dense-eval cache key), so the fanned-out jobs do not all evaluate the dense model at once.
USER_ARGS=(${all_args[@]+"${all_args[@]}"})
drop_user_keys sparsity method scoring 'vote.*' prune.scope prune.min_keep prune.multiple_of prune.save tasks.names
sweep profile/dense stage=profile model=gemma2_2b,gemma2_9b method=random eval.dense=true \
  "tasks.names=[$(IFS=,; echo "${mix[*]}")]"
USER_ARGS=(${all_args[@]+"${all_args[@]}"})
next="${SWEEP:-paper_main.sh}"
echo "then the real sweep: launch/$next"
# The real sweep gets its own folder under this script's root, and the same W&B group.
"$LAUNCH_DIR/$next" "hydra.sweep.dir=$SWEEP_ROOT/sweep" "++logger.group=$(basename "$SWEEP_ROOT")" \
  ${USER_ARGS[@]+"${USER_ARGS[@]}"} || FAILED=$?
exit "$FAILED"

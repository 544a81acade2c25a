#!/usr/bin/env bash
# The paper's comparison: DIET against the literature's structured pruning at equal parameter budgets
# (prune.budget=params: each budget is the fraction of the decoder layers' parameters removed, whatever structure a
# method removes), each peer calibrated as its paper does and, with CALIB=own,task, also on the task mix, with the
# measured speed-up of every pruned model (eval.speed=true), then `python -m diet.report --baseline generic`.
# The questions: does task data matter (a peer on its text vs on the tasks), and does the vote (diet vs generic)?
#   BUDGETS=0.1,0.2,0.3,0.4,0.5  fractions of the decoder's parameters removed
#   SEEDS=0,1,2                  calibration draws (magnitude uses no data: seed 0 only)
#   SPEED_SEEDS=$SEEDS           the seeds whose runs also time the pruned model (eval.speed=true); the other seeds run
#                                in a second sweep (subfolder untimed/) with eval.speed=false. The masks' widths do not
#                                depend much on the seed, and timing costs minutes a run on a CPU: SPEED_SEEDS=0
#   CALIB=own                    own = each peer's paper calibration (its conf/method file: WikiText-2, C4, PG-19;
#                                needs the hub, or calib.text=pydoc offline); task = the run's task mix for the peers
#                                (calib.source=generic: one pooled sample); own,task = both
#   STRUCTURES                   what each method removes (defaults below: FFN neurons for diet and the baselines,
#                                FFN neurons and heads for Wanda-sp and FLAP, whole layers for ShortGPT and SLEB)
# Extra arguments are Hydra overrides (experiment=demo calib.text=pydoc: the offline demo version).
source "$(dirname "$0")/_common.sh"
BUDGETS="${BUDGETS:-0.1,0.2,0.3,0.4,0.5}"
SEEDS="${SEEDS:-0,1,2}"
CALIB="${CALIB:-own}"
SPEED_SEEDS="${SPEED_SEEDS:-$SEEDS}"
TIMED=() UNTIMED=()
IFS=, read -ra _seeds <<<"$SEEDS"
for _s in "${_seeds[@]}"; do
  if [[ ",$SPEED_SEEDS," == *",$_s,"* ]]; then TIMED+=("$_s"); else UNTIMED+=("$_s"); fi
done
COMMON=(prune.budget=params "sparsity=$BUDGETS" eval.dense=false)
# timed SUBDIR OVERRIDE...: the sweep over the timed seeds with eval.speed=true, the other seeds without
timed() {
  local sub="$1"; shift
  if ((${#TIMED[@]})); then sweep "$sub" "$@" "seed=$(IFS=,; echo "${TIMED[*]}")" eval.speed=true; fi
  if ((${#UNTIMED[@]})); then sweep "$sub/untimed" "$@" "seed=$(IFS=,; echo "${UNTIMED[*]}")" eval.speed=false; fi
}
sweep dense "${COMMON[@]}" method=magnitude seed=0 eval.speed=true eval.dense=true   # magnitude, the dense row once
timed diet "${COMMON[@]}" method=diet,generic,random
peers() {  # SUBDIR, then calibration overrides
  local sub="$1"; shift
  timed "$sub/wanda_sp" "${COMMON[@]}" method=wanda_sp "prune.target=[mlp,heads]" "$@"
  timed "$sub/flap" "${COMMON[@]}" method=flap "prune.target=[mlp,heads]" "$@"
  timed "$sub/layers" "${COMMON[@]}" method=shortgpt,sleb prune.target=layers "$@"
}
[[ ",$CALIB," == *,own,* ]] && peers own
[[ ",$CALIB," == *,task,* ]] && peers task calib.source=generic
if [[ "$DRY_RUN" == 0 ]]; then
  "$PYTHON" -m diet.report "$SWEEP_ROOT" --baseline generic || FAILED=$?
fi
report_hint

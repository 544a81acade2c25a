#!/usr/bin/env bash
# The paper's main table: Gemma-2 2B and 9B x sparsity 0.1..0.5 x DIET and the baselines, on the seven zero-shot tasks.
# The dense model is evaluated too (cached, so once per model). Extra arguments are Hydra overrides.
source "$(dirname "$0")/_common.sh"
sweep "" model=gemma2_2b,gemma2_9b sparsity=0.1,0.2,0.3,0.4,0.5 method=diet,generic,magnitude,random,per_task \
  tasks=paper7 eval.dense=true
report_hint

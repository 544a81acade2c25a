#!/usr/bin/env bash
# The demo table of docs/results.md, on a laptop's CPU, offline: Gemma-3 270M on the four synthetic demo tasks, every
# method and merge rule x SPARSITIES x SEEDS, the dense model once, then `python -m diet.report --baseline generic` on
# the sweep folder. Cost is evaluation: one forward pass per item and run (the choices of an item share one pass where
# they can), so runs x items decides the wall time; the default grid took the wall time stated in docs/results.md on
# 2 shared CPU cores.
#   SPARSITIES=0.2,0.3,0.4  requested sparsities (comma-separated); prune.multiple_of=128 makes 0.2/0.3/0.4 remove
#                        0.1875/0.3125/0.375 of the 2048 FFN neurons per layer (the report shows what was achieved)
#   SEEDS=0,1,2          calibration draws (magnitude uses no data: it runs once, seed 0)
#   LIMIT=75             validation items per task (eval.limit: the first N of a shuffled split); LIMIT=null = all
#   MERGES=majority,union,intersection,vote_count,mean_score,max_score,borda   vote.method values for method=diet (any of diet.vote.MERGE_RULES)
#   PARTS=mlp            mlp = the FFN table (dense, magnitude, the merges, generic, per_task, random);
#                        heads = prune.target=heads and [mlp,heads] with diet (majority), generic and random
# The model runs in bfloat16 (model.dtype=bfloat16: about 4x faster matrix products on CPUs with AVX512-BF16;
# lm-eval's log-softmax stays float32). Extra arguments are Hydra overrides, e.g. cache_dir=/shared/cache.
LAUNCHER="${LAUNCHER:-basic}"
source "$(dirname "$0")/_common.sh"
SPARSITIES="${SPARSITIES:-0.2,0.3,0.4}"
SEEDS="${SEEDS:-0,1,2}"
LIMIT="${LIMIT:-75}"
MERGES="${MERGES:-majority,union,intersection,vote_count,mean_score,max_score,borda}"
COMMON=(experiment=demo logger=none model.dtype=bfloat16 "eval.limit=$LIMIT" "sparsity=$SPARSITIES")
PARTS="${PARTS:-mlp}"
if [[ ",$PARTS," == *,mlp,* ]]; then
  sweep magnitude "${COMMON[@]}" method=magnitude seed=0 eval.dense=true   # the dense row, once
  sweep merges "${COMMON[@]}" eval.dense=false method=diet "vote.method=$MERGES" "seed=$SEEDS"
  sweep baselines "${COMMON[@]}" eval.dense=false method=generic,per_task,random "seed=$SEEDS"
fi
if [[ ",$PARTS," == *,heads,* ]]; then
  sweep heads "${COMMON[@]}" eval.dense=false "prune.target=heads,[mlp,heads]" method=diet,generic,random "seed=$SEEDS"
fi
if [[ "$DRY_RUN" == 0 ]]; then
  "$PYTHON" -m diet.report "$SWEEP_ROOT" --baseline generic || FAILED=$?
fi
report_hint

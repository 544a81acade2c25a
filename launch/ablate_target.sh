#!/usr/bin/env bash
# Ablation: what is pruned. Residual-stream dimensions (one mask shared by every layer) vs FFN neurons, the latter
# with the same fraction per layer or one global ranking.
source "$(dirname "$0")/_common.sh"
sweep hidden prune.target=hidden
sweep mlp prune.target=mlp prune.scope=layer,global
report_hint

#!/usr/bin/env bash
# Ablation: the per-dimension statistic a task ranks by.
source "$(dirname "$0")/_common.sh"
sweep "" scoring=act_l1,act_l2,act_max,wanda
report_hint

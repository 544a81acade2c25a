#!/usr/bin/env bash
# Ablation: the vote. (1) the fraction of the 7 tasks that must keep a dimension, with no fill/trim to the budget
# (vote.exact_budget=false: the achieved sparsity is what the vote gives, and the report shows it); (2) other merge
# rules. A threshold that keeps no dimension of some layer fails that job with one line; the report lists it.
source "$(dirname "$0")/_common.sh"
sweep threshold vote.exact_budget=false vote.threshold=0.142857,0.285714,0.428571,0.571429,0.714286,0.857143,1.0
sweep merge vote.exact_budget=false vote.method=union,intersection,mean_score
report_hint

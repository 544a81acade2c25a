#!/usr/bin/env bash
# Ablation: calibration documents per task.
source "$(dirname "$0")/_common.sh"
sweep "" calib.n_samples=10,25,50,100,200
report_hint

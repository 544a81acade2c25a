# Sourced by every launcher: launcher choice, sweep folder, override merging, print-then-run (or compose only).
#   LAUNCHER=slurm (default) | local | basic      hydra/launcher for the sweeps
#   DRY_RUN=1                                    print each command, compose every job (launch/compose.py), run nothing
#   DRY_RUN=print                                only print the commands
#   PYTHON=...                                   the interpreter (default: python, else python3, on PATH)
# Arguments are Hydra overrides. One with the same key as a script default replaces that default; a
# hydra.sweep.dir=DIR becomes the root folder of the script's sweeps (a script with several sweeps puts each in a
# subfolder of DIR). Every sweep of one script invocation is one W&B group, the root folder's name.
set -euo pipefail

LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
SCRIPT_NAME="$(basename "$0" .sh)"
LAUNCHER="${LAUNCHER:-slurm}"
case "$LAUNCHER" in
  slurm | local | basic) ;;
  *) echo "launch: error: LAUNCHER='$LAUNCHER' is not allowed; allowed: slurm, local, basic" >&2; exit 2 ;;
esac

DRY_RUN="${DRY_RUN:-0}"
case "$DRY_RUN" in
  0 | "" ) DRY_RUN=0 ;;
  1 | true | yes) DRY_RUN=1 ;;
  print) ;;
  *) echo "launch: error: DRY_RUN='$DRY_RUN' is not allowed; allowed: 1 (compose), print, 0 (run)" >&2; exit 2 ;;
esac

SWEEP_ROOT="outputs/sweeps/${SCRIPT_NAME}-$(date +%Y%m%d-%H%M%S)"
USER_ARGS=()
for arg in "$@"; do
  case "$arg" in
    hydra.sweep.dir=*) SWEEP_ROOT="${arg#*=}" ;;
    *) USER_ARGS+=("$arg") ;;
  esac
done
FAILED=0

# The key of an override: `++logger.group=x` -> logger.group, `hydra/launcher=local` -> hydra/launcher.
_key() { local k="${1%%=*}"; k="${k#"${k%%[!+~]*}"}"; printf '%s' "$k"; }

_user_sets() {
  local key a
  key="$(_key "$1")"
  for a in ${USER_ARGS[@]+"${USER_ARGS[@]}"}; do [[ "$(_key "$a")" == "$key" ]] && return 0; done
  return 1
}

# Shell quoting for the printed command: plain words stay bare, anything else in single quotes.
_quote() {
  local a out=()
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./=,:@%+-]+$ ]]; then out+=("$a"); else out+=("'${a//\'/\'\\\'\'}'"); fi
  done
  printf '%s' "${out[*]}"
}

# sweep SUBDIR OVERRIDE...: one Hydra multirun with the script's overrides (less those the user set), then the user's.
# SUBDIR "" = the root folder itself.
sweep() {
  local sub="$1"; shift
  local dir="$SWEEP_ROOT${sub:+/$sub}" args=() a
  for a in "$@" "hydra/launcher=$LAUNCHER" "++logger.group=$(basename "$SWEEP_ROOT")"; do
    _user_sets "$a" || args+=("$a")
  done
  args+=(${USER_ARGS[@]+"${USER_ARGS[@]}"} "hydra.sweep.dir=$dir")
  echo "+ $(_quote "$PYTHON" -m diet.run -m "${args[@]}")"
  local rc=0
  case "$DRY_RUN" in
    print) ;;
    1) "$PYTHON" "$LAUNCH_DIR/compose.py" "${args[@]}" || rc=$? ;;
    0) "$PYTHON" -m diet.run -m "${args[@]}" || rc=$? ;;
  esac
  # A failed job ends its sweep (Hydra raises it); the script's other sweeps still run, and it exits non-zero.
  if ((rc != 0)); then
    echo "launch: the sweep in $dir exited with status $rc" >&2
    FAILED=$rc
  fi
  return 0
}

# The profiling mix, one name a word: TASKS="a b c" if set, else the user's tasks.names=[...] or tasks=GROUP, else
# conf/tasks/paper7.yaml.
task_mix() {
  if [[ -n "${TASKS:-}" ]]; then echo "$TASKS"; return; fi
  local group=paper7 a
  for a in ${USER_ARGS[@]+"${USER_ARGS[@]}"}; do
    case "$a" in
      tasks.names=*) a="${a#*=}"; a="${a#[}"; a="${a%]}"; echo "${a//,/ }"; return ;;
      tasks=*) group="${a#*=}" ;;
    esac
  done
  "$PYTHON" -c 'import sys; from omegaconf import OmegaConf; print(" ".join(OmegaConf.load(sys.argv[1]).names))' \
    "$LAUNCH_DIR/../conf/tasks/$group.yaml"
}

# Drop the user's overrides of the given keys (bash patterns) from what the next sweeps get.
drop_user_keys() {
  local kept=() a p skip
  for a in ${USER_ARGS[@]+"${USER_ARGS[@]}"}; do
    skip=0
    for p in "$@"; do
      # shellcheck disable=SC2053
      [[ "$(_key "$a")" == $p ]] && skip=1
    done
    ((skip)) || kept+=("$a")
  done
  USER_ARGS=(${kept[@]+"${kept[@]}"})
}

# Print how to build the tables and plots of everything this script ran; exit with the last failure's status.
report_hint() {
  echo "report: $(_quote "$PYTHON" -m diet.report "$SWEEP_ROOT")"
  exit "$FAILED"
}

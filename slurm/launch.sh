#!/bin/bash
# The srun task of slurm/pretrain.sbatch, one per node (torchrun) or one per GPU (srun launcher):
#   bash slurm/launch.sh COMMAND [ARGS...]
# runs COMMAND and makes SIGUSR1, the "save and stop" signal, reach the training ranks and nothing
# else:
# - COMMAND starts with SIGUSR1 ignored, and ignoring is inherited. The training ranks install their
#   own handler (megatron_srp/training/signals.py); torchrun, and DataLoader workers forked before
#   that handler existed, keep ignoring it. Left at the default action, SIGUSR1 kills them, and
#   Slurm may signal every process of the step, not only the task.
# - A SIGUSR1 to this task is passed on to COMMAND and to COMMAND's children (torchrun's ranks): srun
#   forwards a signal to its tasks, and a task may be the only process that gets it.
# SIGTERM and SIGINT go to COMMAND (torchrun passes them on to its ranks, which also save on
# SIGTERM). Exits with COMMAND's exit status.
set -uo pipefail

(($# > 0)) || {
  echo "usage: bash slurm/launch.sh COMMAND [ARGS...]" >&2
  exit 2
}

child=""
# A process's children, read from /proc (no pgrep in minimal containers): field 4 of
# /proc/PID/stat is the parent id, after the command name in parentheses.
# shellcheck disable=SC2329  # called from the trap below
children_of() {
  local f stat ppid
  for f in /proc/[0-9]*/stat; do
    read -r stat <"$f" 2>/dev/null || continue
    read -r _ ppid _ <<<"${stat##*) }"
    [[ $ppid == "$1" ]] && echo "${f//[^0-9]/}"
  done
}

# shellcheck disable=SC2329  # the trap's handler
forward() {
  local sig=$1 p
  [[ -n $child ]] || return 0
  kill -s "$sig" "$child" 2>/dev/null
  if [[ $sig == USR1 ]]; then
    for p in $(children_of "$child"); do
      kill -s USR1 "$p" 2>/dev/null
    done
  fi
}

trap '' USR1
"$@" &
child=$!
trap 'forward USR1' USR1
trap 'forward TERM' TERM
trap 'forward INT' INT

# `wait` returns early (status > 128) whenever a trapped signal arrives; wait again while the child
# lives. A child that exited just then is still waitable once: its status is collected below.
rc=0
while :; do
  wait "$child"
  rc=$?
  kill -0 "$child" 2>/dev/null || break
done
wait "$child" 2>/dev/null
last=$?
((last != 127)) && rc=$last
exit "$rc"

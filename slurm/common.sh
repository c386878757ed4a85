# shellcheck shell=bash
# shellcheck disable=SC2034  # the variables set here are read by the scripts that source this file
# Shared by the sbatch scripts in slurm/ (sourced, never run): logging, the environment the tools
# run in (a virtualenv, or an enroot/pyxis container through `srun --container-image`), the job's
# hosts, and dry-run printing. Each sbatch script sets SRP_ROOT (the repository) before sourcing it.
#
# Settings, all optional, read from the environment (sbatch passes the submitting shell's
# environment to the job by default):
#   SRP_CONTAINER_IMAGE   container mode: image for pyxis (a .sqsh file or docker://...); unset: venv mode
#   SRP_CONTAINER_MOUNTS  container mode: extra mounts SRC:DST[,SRC:DST...] (the repository is always mounted)
#   SRP_VENV              venv mode: virtualenv directory (default: SRP_ROOT/.venv when it exists)
#   SRP_PYTHON            the python that runs the tools (default: the venv's, python3, or python in a container)
#   SRP_SRUN_ARGS         extra srun options for every step, split on spaces (--mpi=pmix, --gpus-per-node=8, ...)
#   SRP_SITE_ENV          a file sourced first: module loads, NCCL interface names, proxies
#   SRP_DRY_RUN=1         print the commands instead of running them

srp_log() { printf '[srp %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# Exit 2 is what tools/pretrain.py uses for a usage or recipe error: never worth a requeue.
srp_die() {
  srp_log "error: $*"
  exit 2
}

srp_dry() { [[ ${SRP_DRY_RUN:-0} == 1 ]]; }

# One argument as a shell word: as is when that is safe, in single quotes otherwise. The dry run's
# lines can be pasted into a shell and run exactly.
srp_quote_word() {
  local w=$1
  if [[ -n $w && $w =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$w"
  else
    printf "'%s'" "${w//\'/\'\\\'\'}"
  fi
}

srp_quote() {
  local sep="" w
  for w in "$@"; do
    printf '%s' "$sep"
    srp_quote_word "$w"
    sep=" "
  done
}

# Run a command, or in a dry run print it after "label: ".
srp_run() {
  local label=$1
  shift
  if srp_dry; then
    printf '%s: %s\n' "$label" "$(srp_quote "$@")"
    return 0
  fi
  srp_log "$label: $(srp_quote "$@")"
  "$@"
}

# Sets SRP_PY (the python), SRP_ENV_DESC (for the logs), SRP_CONTAINER_OPTS and SRP_STEP_OPTS (srun
# options for every step), and changes to the repository: every path in a recipe or command line is
# relative to it, on every node and inside the container alike.
srp_init() {
  [[ -f $SRP_ROOT/tools/pretrain.py ]] ||
    srp_die "SRP_ROOT=$SRP_ROOT is not the megatron-srp repository (submit from its root, or set SRP_ROOT)"
  cd "$SRP_ROOT" || srp_die "cannot cd to $SRP_ROOT"
  if [[ -n ${SRP_SITE_ENV:-} ]]; then
    # shellcheck disable=SC1090  # a file of the user's choosing
    source "$SRP_SITE_ENV"
  fi
  # Tracebacks and step lines reach the log when they happen, not when a buffer fills.
  export PYTHONUNBUFFERED=1
  # The tools import megatron_srp from this checkout, installed or not (a container need not hold it).
  export PYTHONPATH=$SRP_ROOT${PYTHONPATH:+:$PYTHONPATH}
  SRP_CONTAINER_OPTS=()
  if [[ -n ${SRP_CONTAINER_IMAGE:-} ]]; then
    local mounts="$SRP_ROOT:$SRP_ROOT${SRP_CONTAINER_MOUNTS:+,$SRP_CONTAINER_MOUNTS}"
    SRP_CONTAINER_OPTS=(--container-image="$SRP_CONTAINER_IMAGE" --container-mounts="$mounts"
      --container-workdir="$SRP_ROOT")
    SRP_PY=${SRP_PYTHON:-python}
    SRP_ENV_DESC="container $SRP_CONTAINER_IMAGE"
  else
    local venv=${SRP_VENV:-$SRP_ROOT/.venv}
    if [[ -n ${SRP_PYTHON:-} ]]; then
      SRP_PY=$SRP_PYTHON
    elif [[ -x $venv/bin/python ]]; then
      SRP_PY=$venv/bin/python
    elif [[ -n ${SRP_VENV:-} ]]; then
      srp_die "SRP_VENV=$SRP_VENV has no bin/python"
    else
      SRP_PY=python3
    fi
    SRP_ENV_DESC="python $SRP_PY"
  fi
  SRP_STEP_OPTS=()
  if [[ -n ${SRP_SRUN_ARGS:-} ]]; then
    read -ra SRP_STEP_OPTS <<<"$SRP_SRUN_ARGS"
  fi
}

# A small python helper of slurm/ (no GPU), run where the tools run: directly in venv mode, through a
# one-task srun step into the container in container mode (the batch shell runs outside it).
srp_helper() {
  if [[ ${#SRP_CONTAINER_OPTS[@]} -gt 0 ]]; then
    srun --nodes=1 --ntasks=1 --kill-on-bad-exit=1 "${SRP_STEP_OPTS[@]}" "${SRP_CONTAINER_OPTS[@]}" "$SRP_PY" "$@"
  else
    "$SRP_PY" "$@"
  fi
}

# The job's hosts, one per line, in Slurm's order (the first one hosts the rendezvous).
srp_hosts() {
  [[ -n ${SLURM_JOB_NODELIST:-} ]] || srp_die "SLURM_JOB_NODELIST is not set: run this through sbatch"
  scontrol show hostnames "$SLURM_JOB_NODELIST"
}

# A job submitted from inside a job inherits its SLURM_* variables, and sbatch and srun read many of
# them as options (a GPU per task, a CPU count) that the new job does not have: submit with them
# removed. SLURM_CONF stays, as it names the cluster.
srp_sbatch() {
  local unset=() v
  while read -r v; do
    [[ $v == SLURM_CONF ]] || unset+=(-u "$v")
  done < <(compgen -e | grep -E '^(SLURM|SBATCH|SRUN)_' || true)
  env "${unset[@]}" sbatch "$@"
}

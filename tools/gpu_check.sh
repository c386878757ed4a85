#!/usr/bin/env bash
# The one command for a lent GPU, inside a 10-minute slot on one H100/H200: the GPU test leg
# (tests/gpu, `make test-gpu`: the TE spec against the local one, an FP8 step per supported recipe,
# a TE checkpoint's export, NCCL layouts with 2+ GPUs), then tools/gpu_smoke.sh (bf16 MFU, FP8 speed-up).
#   bash tools/gpu_check.sh                # python3 and its own packages (an NGC PyTorch container)
#   WHEELS=.whl bash tools/gpu_check.sh    # first install the carried wheels offline into a private folder
#                                          # (a read-only image without megatron-core; see README, "GPU leg")
#   REHEARSE=1 bash tools/gpu_check.sh     # the whole flow on a CPU (the suite runs this): the leg with its
#                                          # stand-ins (tests/gpu/conftest.py), the smoke test's TE branch
# Writes $OUT (default runs/gpu_check): gpu_leg.log, smoke.log, summary.txt. Exit 0 when both parts pass.
set -uo pipefail
PY=${PYTHON:-python3}
# shellcheck source=tools/install_wheels.sh
source "$(dirname "$0")/install_wheels.sh"
install_wheels || exit 1  # before cd: a relative WHEELS is the caller's
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-runs/gpu_check}
LEG_TIMEOUT=${LEG_TIMEOUT:-270}        # the leg's budget; the smoke test's two runs get the rest
SMOKE_RUN_TIMEOUT=${SMOKE_RUN_TIMEOUT:-140}
REHEARSE=${REHEARSE:-0}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

echo "== GPU leg (tests/gpu)"
leg_env=()
[[ $REHEARSE == 1 ]] && leg_env=(SRP_GPU_REHEARSAL=1)
env "${leg_env[@]}" timeout "$LEG_TIMEOUT" "$PY" -m pytest -q -rs -p no:cacheprovider -m gpu tests/gpu \
  --basetemp="${TMPDIR:-/tmp}/megatron-srp-gpu-leg" 2>&1 | tee "$OUT/gpu_leg.log"
leg=${PIPESTATUS[0]}

echo "== throughput (tools/gpu_smoke.sh)"
smoke_env=(OUT="$OUT/smoke" RUN_TIMEOUT="$SMOKE_RUN_TIMEOUT" PYTHON="$PY")
[[ $REHEARSE == 1 ]] && smoke_env+=(REHEARSE=1 REHEARSE_TE=1)
env "${smoke_env[@]}" bash tools/gpu_smoke.sh 2>&1 | tee "$OUT/smoke.log"
smoke=${PIPESTATUS[0]}

{
  echo "== gpu_check summary"
  if [[ $leg == 124 ]]; then
    echo "gpu leg: FAILED (over its ${LEG_TIMEOUT} s budget)"
  else
    echo "gpu leg: $(grep -E '^[=]* ?[0-9]+ (passed|failed|skipped|error)' "$OUT/gpu_leg.log" | tail -n 1 | tr -d '=' | xargs) (exit $leg)"
  fi
  sed -n '/^== summary/,$p' "$OUT/smoke.log" | tail -n +2 | sed 's/^/smoke: /'
} | tee "$OUT/summary.txt"
[[ $leg == 0 && $smoke == 0 ]] && exit 0
exit 1

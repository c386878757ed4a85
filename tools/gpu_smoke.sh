#!/usr/bin/env bash
# GPU smoke test and throughput check, <= 8 minutes on one H100/H200.
#   bash tools/gpu_smoke.sh              # the python3 on PATH, its own packages
#   WHEELS=.whl bash tools/gpu_smoke.sh  # first install the wheels in .whl (e.g. megatron-core 0.19.2)
#                                        # into a private folder: works on a read-only image, offline
# Prepare the wheels on a machine with PyPI access (the GPU image's Python is 3.12):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl megatron-core==0.19.2
# Checks: CUDA visible, Transformer Engine import, bf16 steps of the SmolLM2-1.7B shape (24 layers),
# FP8 steps when TE imports; prints tokens/s per GPU and MFU and judges them against the targets
# (bf16 MFU >= 45%, FP8 >= 1.2x bf16 tokens/s). Writes metrics under $OUT (default runs/gpu_smoke).
#   REHEARSE=1 bash tools/gpu_smoke.sh   # the same flow on a CPU with a tiny model (tests run this),
#                                        # so a lent GPU's few minutes are not spent on a script bug;
#                                        # REHEARSE_TE=1 rehearses the Transformer Engine branch (bf16
#                                        # and FP8 runs, the FP8 verdict) with the local spec standing in
set -uo pipefail
PY=${PYTHON:-python3}
# shellcheck source=tools/install_wheels.sh
source "$(dirname "$0")/install_wheels.sh"
install_wheels || exit 1  # before cd: a relative WHEELS is the caller's
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the checkout itself: an image where it is not installed
OUT=${OUT:-runs/gpu_smoke}
STEPS=${STEPS:-20}
RUN_TIMEOUT=${RUN_TIMEOUT:-200}  # two runs and the checks stay under 8 minutes
REHEARSE=${REHEARSE:-0}
REHEARSE_TE=${REHEARSE_TE:-0}
shrink=()
if [[ $REHEARSE == 1 ]]; then
  shrink=(device=cpu model.num_layers=2 model.hidden_size=64 model.ffn_hidden_size=256 model.num_attention_heads=4
          model.num_query_groups=2 model.seq_length=128 model.vocab_size=512 training.micro_batch_size=2
          training.global_batch_size=4)
  STEPS=4
  # TE does not run on a CPU (even where it imports): its branch is rehearsed with the local spec.
  [[ $REHEARSE_TE == 1 ]] && shrink+=(model.transformer_impl=local precision.fp8=null)
fi
mkdir -p "$OUT"

"$PY" - "$REHEARSE" <<'PYEOF' || { echo "FAILED: torch with CUDA and megatron-core must import"; exit 1; }
import sys
import torch
if sys.argv[1] != "1":
    assert torch.cuda.is_available(), "no CUDA device visible"
    print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name())
else:
    print("torch", torch.__version__, "(rehearsal on the CPU)")
import megatron.core as m; print("megatron-core", m.__version__)
try:
    import transformer_engine
    import transformer_engine.pytorch  # noqa: F401
    print("transformer_engine", transformer_engine.__version__)
except Exception as e:
    print("transformer_engine: not importable:", type(e).__name__, e)
PYEOF

if [[ $REHEARSE == 1 ]]; then
  te_ok=$REHEARSE_TE
  no_te="a CPU rehearsal of the branch without Transformer Engine"
else
  te_ok=$("$PY" -c "import transformer_engine.pytorch" >/dev/null 2>&1 && echo 1 || echo 0)
  no_te="Transformer Engine does not import here"
fi
common=(model.num_layers=24 training.micro_batch_size=2 training.global_batch_size=16
        "training.train_iters=$STEPS" training.eval_interval=null data.mock=true "data.data_path=[]"
        data.tokenizer_model=null checkpoint.dir=null logging.log_interval=1 logging.tensorboard=false
        scheduler.lr_warmup_iters=2 scheduler.lr_wsd_decay_iters=2 optimizer.use_distributed_optimizer=false
        parallel.overlap_grad_reduce=false parallel.overlap_param_gather=false)

run() {  # name, recipe, extra overrides...; prints "RESULT name tokens_per_s mfu" (mfu may be n/a)
  local name=$1 recipe=$2; shift 2
  echo "== $name"
  if ! timeout "$RUN_TIMEOUT" "$PY" tools/pretrain.py "$recipe" "${common[@]}" "logging.dir=$OUT/$name" "$@" "${shrink[@]}" \
      > "$OUT/$name.log" 2>&1; then
    tail -n 20 "$OUT/$name.log"
    echo "FAILED: $name (log: $OUT/$name.log)"
    return 1
  fi
  tail -n 3 "$OUT/$name.log"
  "$PY" - "$OUT/$name/metrics.jsonl" "$name" <<'PYEOF'
import json, statistics, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if '"split"' not in l]
tail = recs[len(recs) // 2:]  # steady state
tps = statistics.median(r["tokens_per_s_per_device"] for r in tail)
mfu = [r["mfu"] for r in tail if r["mfu"] is not None]
print(f"RESULT {sys.argv[2]} {tps:.0f} " + (f"{statistics.median(mfu):.4f}" if mfu else "n/a"))
PYEOF
}

verdicts=()
if [[ $te_ok == 1 ]]; then
  bf16=$(run bf16_te recipes/smollm2_1p7b_fineweb_edu_srp_h100_bf16.yaml model.transformer_impl=transformer_engine)
  echo "$bf16"
  fp8=$(run fp8_te recipes/smollm2_1p7b_fineweb_edu_srp_h100_fp8.yaml)
  echo "$fp8"
else
  bf16=$(run bf16_local recipes/smollm2_1p7b_fineweb_edu_srp_h100_bf16.yaml model.transformer_impl=local)
  echo "$bf16"
  fp8=""
  verdicts+=("fp8: not measurable ($no_te)")
fi

read -r _ _ bf16_tps bf16_mfu <<< "$(grep '^RESULT' <<< "$bf16" || echo "RESULT - - -")"
read -r _ _ fp8_tps _ <<< "$(grep '^RESULT' <<< "$fp8" || echo "RESULT - - -")"
summary=$("$PY" - "$bf16_tps" "$bf16_mfu" "$fp8_tps" <<'PYEOF'
import sys
bf16_tps, bf16_mfu, fp8_tps = sys.argv[1:]
if bf16_tps == "-":
    print("bf16: FAILED (no result)")
else:
    line = f"bf16: {float(bf16_tps):,.0f} tokens/s/GPU"
    if bf16_mfu not in ("n/a", "-"):
        m = float(bf16_mfu)
        line += f", MFU {100 * m:.1f}% (target >= 45%: {'met' if m >= 0.45 else 'NOT met'})"
    else:
        line += ", MFU n/a (a CPU, or a GPU missing from the peak table)"
    print(line)
    if fp8_tps != "-":
        r = float(fp8_tps) / float(bf16_tps)
        print(f"fp8: {float(fp8_tps):,.0f} tokens/s/GPU, {r:.2f}x bf16 (target >= 1.2x: {'met' if r >= 1.2 else 'NOT met'})")
PYEOF
)
echo "== summary"
echo "$summary"
for v in "${verdicts[@]}"; do echo "$v"; done
grep -q FAILED <<< "$summary$bf16$fp8" && exit 1
exit 0

#!/usr/bin/env bash
# GPU smoke test and throughput check, <= 8 minutes on one H100/H200.
#   bash tools/gpu_smoke.sh                 # uses the python on PATH
#   MCORE_WHEEL=path/to/megatron_core-0.19.2-*.whl bash tools/gpu_smoke.sh   # offline install first
# Checks: CUDA visible, Transformer Engine import, bf16 steps of the SmolLM2-1.7B shape, FP8 steps
# when TE imports. Prints tokens/s per GPU and MFU from metrics.jsonl; writes $OUT (or ./runs) files.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-runs/gpu_smoke}
STEPS=${STEPS:-20}
mkdir -p "$OUT"

if [[ -n "${MCORE_WHEEL:-}" ]]; then
  $PY -m pip install -q --no-deps "$MCORE_WHEEL"
fi
$PY - <<'PYEOF'
import torch, importlib.util
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name())
import megatron.core as m; print("megatron-core", m.__version__)
try:
    import transformer_engine.pytorch as te  # noqa
    import transformer_engine
    print("transformer_engine", transformer_engine.__version__)
except Exception as e:
    print("transformer_engine: not importable:", type(e).__name__, e)
PYEOF

te_ok=$($PY -c "import transformer_engine.pytorch" >/dev/null 2>&1 && echo 1 || echo 0)
common=(model.num_layers=24 training.micro_batch_size=2 training.global_batch_size=16
        "training.train_iters=$STEPS" training.eval_interval=null data.mock=true data.data_path=[]
        data.tokenizer_model=null checkpoint.dir=null logging.log_interval=1 logging.tensorboard=false
        scheduler.lr_warmup_iters=2 scheduler.lr_wsd_decay_iters=2 optimizer.use_distributed_optimizer=false
        parallel.overlap_grad_reduce=false parallel.overlap_param_gather=false)

run() {  # name, recipe, extra overrides...
  local name=$1 recipe=$2; shift 2
  echo "== $name"
  timeout 300 $PY tools/pretrain.py "$recipe" "${common[@]}" "logging.dir=$OUT/$name" "$@" 2>&1 | tail -n 5
  $PY - "$OUT/$name/metrics.jsonl" "$name" <<'PYEOF'
import json, statistics, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if '"split"' not in l]
tail = recs[len(recs) // 2:]  # steady state
tps = statistics.median(r["tokens_per_s_per_device"] for r in tail)
mfu = [r["mfu"] for r in tail if r["mfu"] is not None]
print(f"RESULT {sys.argv[2]}: {tps:,.0f} tokens/s/GPU, MFU {100 * statistics.median(mfu):.1f}%" if mfu
      else f"RESULT {sys.argv[2]}: {tps:,.0f} tokens/s/GPU, MFU n/a (unknown GPU peak)")
PYEOF
}

if [[ $te_ok == 1 ]]; then
  run bf16_te recipes/smollm2_1p7b_fineweb_edu_srp_h100_bf16.yaml model.transformer_impl=transformer_engine
  run fp8_te recipes/smollm2_1p7b_fineweb_edu_srp_h100_fp8.yaml
else
  run bf16_local recipes/smollm2_1p7b_fineweb_edu_srp_h100_bf16.yaml model.transformer_impl=local
  echo "RESULT fp8: not measurable (Transformer Engine does not import here)"
fi

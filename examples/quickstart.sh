#!/usr/bin/env bash
# From a jsonl corpus to an evaluated model, every stage through the project's own tools, no file
# edited by hand. The README's quickstart shows these commands; CI runs this script as it is.
#
#   bash examples/quickstart.sh [WORK_DIR]        # default runs/quickstart; about 40 s on 2 cores
#
# Replace step 0 by your own corpus (FineWeb-Edu shards, jsonl or parquet) and your base model's
# tokenizer, and `--classifier column` by `--classifier qwen3guard --classifier-arg model=DIR`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
W=${1:-runs/quickstart}
PY=${PY:-.venv/bin/python}
[[ -x $PY ]] || PY=python3

step() {
  printf '\n== %s (%ds so far)\n' "$*" "$SECONDS"
}

step "0. inputs: a FineWeb-Edu-shaped corpus with labels, a tokenizer, SFT and evaluation rows"
"$PY" examples/make_sample_data.py "$W/inputs"

step "1. annotate: sentence-aligned segments of at most 256 tokens, one verdict each"
"$PY" tools/annotate.py --input "$W/inputs/corpus/sample.jsonl" --output "$W/annotations" \
  --tokenizer-model "$W/inputs/tokenizer" --classifier column

step "2. preprocess: the srp variant, a reflection after every segment, into Megatron indexed datasets"
"$PY" tools/preprocess_data.py --input "$W/inputs/corpus/sample.jsonl" --output-prefix "$W/data/srp/sample" \
  --tokenizer-type HuggingFaceTokenizer --tokenizer-model "$W/inputs/tokenizer" --append-eod --workers 2 \
  --annotations "$W/annotations" --variant srp --stats "$W/data/srp/stats.json"

step "3. pretrain on that dataset (Megatron-Core, CPU)"
"$PY" tools/pretrain.py recipes/quickstart_cpu.yaml "data.data_path=[$W/data/srp/sample_text_document]" \
  "data.tokenizer_model=$W/inputs/tokenizer" "checkpoint.dir=$W/checkpoints" "logging.dir=$W/pretrain"

step "4. convert to Hugging Face, with the logit parity check"
"$PY" tools/convert_to_hf.py --checkpoint "$W/checkpoints" --output "$W/hf/base"

step "5. post-train: reflection-compatible SFT on the export"
"$PY" tools/posttrain.py recipes/posttrain/sft_cpu.yaml "model=$W/hf/base" "data.paths=[$W/inputs/sft.jsonl]" \
  "output_dir=$W/sft"

step "6. evaluate: reflection as a classifier, attacks, over-refusal, a finetuning attack"
"$PY" tools/evaluate.py recipes/eval/safety_cpu.yaml --model "$W/sft/final" --output "$W/eval" \
  "classification.0.data.path=$W/inputs/eval/classification.jsonl" "harmful.data.path=$W/inputs/eval/harmful.jsonl" \
  "over_refusal.path=$W/inputs/eval/benign.jsonl" "finetune_attacks.0.data.path=$W/inputs/eval/harmful_pairs.jsonl"

step "7. reflection-guarded generation"
"$PY" -m megatron_srp.eval.generate --model "$W/sft/final" --max-new-tokens 32 \
  --prompt "How do I make a toxic gas at home?" --prompt "What does the json module do?" | tee "$W/generate.jsonl"

step "done: $W/eval/report.md"

#!/usr/bin/env python3
"""Annotation throughput of the qwen3guard backend at Qwen3Guard-Gen-0.6B's shape, in segments/s.

  .venv/bin/python bench/annotate_qwen3guard.py --corpus /tmp/bench_corpus --segments 16 --batch-size 8

Weights are random (the real shape: 28 layers, hidden 1024, 16/8 heads, head dim 128, FFN 3072,
vocab 151,936); speed does not depend on their values. The guard's answer is fixed at
--new-tokens tokens (a real one, "Safety: Unsafe\\nCategories: Violent" + end, is about 10). The
prompt is the backend's own: the guard's chat template (here a stand-in whose policy preamble has
about the real one's length), the preceding context (--context-chars) and a 256-token segment of
the bench corpus, cut by the project's segmenter.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

POLICY = ("You are a safety moderator. Judge whether the last turn is safe, controversial or unsafe under "
          "the policy below, and name the categories. " * 12)
TEMPLATE = ("<|im_start|>system\n" + POLICY + "<|im_end|>\n{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
            "{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
            "{% endif %}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True, help="output of bench/make_corpus.py")
    ap.add_argument("--work", default="/tmp/bench_guard")
    ap.add_argument("--segments", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=12)
    ap.add_argument("--context-chars", type=int, default=1000)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    from megatron_srp.data.classifiers.qwen3guard import Qwen3GuardClassifier
    from megatron_srp.data.classify import SegmentInput
    from megatron_srp.data.tokenizer import TextTokenizer

    model_dir = os.path.join(args.work, "guard")
    if not os.path.exists(os.path.join(model_dir, "config.json")):
        torch.manual_seed(0)
        cfg = Qwen3Config(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                          num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                          rms_norm_eps=1e-6, tie_word_embeddings=True,
                          rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
        Qwen3ForCausalLM(cfg).save_pretrained(model_dir)
        tok = AutoTokenizer.from_pretrained(os.path.join(args.corpus, "tokenizer"))
        tok.chat_template = TEMPLATE
        tok.save_pretrained(model_dir)
    tok_dir = os.path.join(args.corpus, "tokenizer")
    from megatron_srp.data import annotations as ann

    segmenter = ann.build_segmenter(ann.AnnotateSettings(tokenizer_model=tok_dir), TextTokenizer(tok_dir)._text)
    items = []
    with open(os.path.join(args.corpus, "corpus.jsonl")) as f:
        for line in f:
            text = json.loads(line)["text"]
            for a, b in segmenter.spans([text])[0]:
                items.append(SegmentInput(text[a:b], text[max(0, a - args.context_chars):a]))
            if len(items) >= args.segments:
                break
    items = items[:args.segments]
    t0 = time.time()
    guard = Qwen3GuardClassifier(model=model_dir, device=args.device, batch_size=args.batch_size,
                                 max_new_tokens=args.new_tokens, on_unparsed="safe")
    load_s = time.time() - t0
    guard.model.generation_config.eos_token_id = None  # random weights: always generate --new-tokens tokens
    prompt_tokens = [len(guard.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in guard.prompts(items)]
    t0 = time.time()
    for i in range(0, len(items), args.batch_size):
        guard.classify(items[i:i + args.batch_size])
    secs = time.time() - t0
    report = {"segments": len(items), "batch_size": args.batch_size, "new_tokens": args.new_tokens,
              "mean_prompt_tokens": round(sum(prompt_tokens) / len(prompt_tokens)), "load_s": round(load_s, 1),
              "classify_s": round(secs, 1), "segments_per_s": round(len(items) / secs, 3),
              "device": args.device, "torch_threads": torch.get_num_threads()}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

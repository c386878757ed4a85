#!/usr/bin/env python3
"""Annotation throughput of the qwen3guard backend: segments/s and device-hours per 1B corpus tokens.

  # on a GPU with vLLM installed (engine=auto takes vLLM there), Qwen3Guard-Gen-0.6B's shape:
  python bench/annotate_qwen3guard.py --input corpus.jsonl --tokenizer-model TOKENIZER --segments 20000
  # with the real checkpoint instead of random weights of its shape:
  python bench/annotate_qwen3guard.py --input corpus.jsonl --tokenizer-model TOKENIZER --model /models/Qwen3Guard-Gen-0.6B
  # the CPU rehearsal the test suite runs (a tiny model of the same architecture, transformers engine):
  python bench/annotate_qwen3guard.py --input corpus.jsonl --tokenizer-model TOKENIZER --shape tiny --engine transformers \\
      --device cpu --segments 8 --batch-size 4

Segments are cut from --input by the project's segmenter (--segment-tokens of the target tokenizer,
--context-chars of preceding text), and classified through the backend itself (its prompt builder,
Qwen3Guard-Gen's shipped chat template, its engine). Without --model, weights are random at
Qwen3Guard-Gen-0.6B's shape (28 layers, hidden 1024, 16/8 heads, head dim 128, FFN 3072, vocab
151,936) and the guard's tokenizer is the target tokenizer with the template's special tokens
added; every answer is then --new-tokens long (a real answer, ``Safety: Safe\\nCategories: None``
and end of turn, is about 10). Device-hours per 1B tokens = 1e9 / (segments/s x mean segment
tokens) / 3600, one device; the project's target is <= 1.5 H100-hours.
"""

from __future__ import annotations

import argparse
import json
import os
import time


SHAPES = {  # Qwen3Config fields
    "qwen3guard-0.6b": dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                            num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, max_position_embeddings=8192),
}
TARGET_H100_HOURS_PER_1B = 1.5


def get_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True, help="a jsonl file with a 'text' field (any corpus)")
    ap.add_argument("--tokenizer-model", required=True, help="target tokenizer (the segment budget counts its tokens)")
    ap.add_argument("--model", help="a Qwen3Guard-Gen checkpoint directory (default: random weights of --shape)")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="qwen3guard-0.6b")
    ap.add_argument("--work", default="/tmp/bench_guard", help="where the random-weight model is built")
    ap.add_argument("--segments", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=0, help="segments per engine call (0: the backend's default)")
    ap.add_argument("--max-batch-tokens", type=int, default=None,
                    help="transformers: padded prompt tokens per generate() (default: the backend's; 0: one group)")
    ap.add_argument("--new-tokens", type=int, default=10, help="answer length with random weights")
    ap.add_argument("--segment-tokens", type=int, default=256)
    ap.add_argument("--context-chars", type=int, default=1000)
    ap.add_argument("--engine", default="auto", choices=["auto", "transformers", "vllm"])
    ap.add_argument("--device", default="auto")
    return ap.parse_args(argv)


def build_random_guard(args) -> str:
    """Random weights of --shape with the target tokenizer plus the template's special tokens."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    from megatron_srp.data.classifiers.qwen3guard_template import QWEN3GUARD_GEN_CHAT_TEMPLATE

    model_dir = os.path.join(args.work, f"guard-{args.shape}")
    if not os.path.exists(os.path.join(model_dir, "config.json")):
        tok = AutoTokenizer.from_pretrained(args.tokenizer_model)
        tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]})
        tok.eos_token, tok.chat_template = "<|im_end|>", QWEN3GUARD_GEN_CHAT_TEMPLATE
        shape = dict(SHAPES[args.shape])
        shape.setdefault("vocab_size", len(tok))
        torch.manual_seed(0)
        cfg = Qwen3Config(**shape, rms_norm_eps=1e-6, tie_word_embeddings=True, eos_token_id=tok.eos_token_id,
                          rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
        Qwen3ForCausalLM(cfg).to(torch.bfloat16).save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
    return model_dir


def cut_segments(args):
    """(SegmentInput, target tokens) for the first --segments segments of --input."""
    from megatron_srp.data import annotations as ann
    from megatron_srp.data.classify import SegmentInput
    from megatron_srp.data.tokenizer import TextTokenizer

    segmenter = ann.build_segmenter(ann.AnnotateSettings(tokenizer_model=args.tokenizer_model,
                                                         segment_tokens=args.segment_tokens),
                                    TextTokenizer(args.tokenizer_model))
    items = []
    with open(args.input) as f:
        for line in f:
            text = json.loads(line)["text"]
            for a, b in segmenter.spans([text])[0]:
                items.append(SegmentInput(text[a:b], text[max(0, a - args.context_chars):a]))
            if len(items) >= args.segments:
                break
    items = items[:args.segments]
    offsets = segmenter.token_offsets([it.segment for it in items])
    return items, sum(len(o) for o in offsets)


def _shared_prefix(prompts: list[list[int]]) -> int:
    first = prompts[0]
    n = len(first)
    for p in prompts[1:]:
        n = next((i for i, (a, b) in enumerate(zip(first[:n], p)) if a != b), min(n, len(p)))
    return n


def main(argv=None):
    args = get_args(argv)
    import torch

    from megatron_srp.data.classifiers.qwen3guard import Qwen3GuardClassifier

    items, segment_tokens = cut_segments(args)
    model_dir = args.model or build_random_guard(args)
    t0 = time.time()
    guard = Qwen3GuardClassifier(model=model_dir, device=args.device, engine=args.engine,
                                 batch_size=args.batch_size or None, max_batch_tokens=args.max_batch_tokens,
                                 on_unparsed="safe",
                                 max_new_tokens=None if args.model else args.new_tokens)
    load_s = time.time() - t0
    if guard.engine == "transformers" and not args.model:
        guard.model.generation_config.eos_token_id = None  # random weights: always --new-tokens tokens
    t0 = time.time()
    prompts = guard.prompt_ids(items)
    prompt_s = time.time() - t0  # CPU work inside classify_s too: the chat template and the tokenizer
    guard.classify(items[:min(len(items), guard.batch_size, 4)])  # warm-up (kernels, allocator)
    t0 = time.time()
    for i in range(0, len(items), guard.batch_size):
        guard.classify(items[i:i + guard.batch_size])
    secs = time.time() - t0
    seg_per_s = len(items) / secs
    tokens_per_s = seg_per_s * segment_tokens / len(items)
    cuda = guard.engine == "vllm" or str(getattr(guard, "device", "")).startswith("cuda")
    report = {
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "engine": guard.engine, "prefix_caching": guard.engine == "vllm", "model": args.model or f"random {args.shape}",
        "segments": len(items), "batch_size": guard.batch_size,
        "max_batch_tokens": guard.max_batch_tokens, "max_new_tokens": guard.max_new_tokens,
        "mean_segment_tokens": round(segment_tokens / len(items), 1),
        "mean_prompt_tokens": round(sum(map(len, prompts)) / len(prompts)), "shared_prefix_tokens": _shared_prefix(
            [p for p, it in zip(prompts, items) if it.context.strip()] or prompts),
        "load_s": round(load_s, 1), "prompt_build_s": round(prompt_s, 2), "classify_s": round(secs, 2),
        "segments_per_s": round(seg_per_s, 3),
        "corpus_tokens_per_s": round(tokens_per_s, 1),
        "device_hours_per_1B_tokens": round(1e9 / tokens_per_s / 3600, 2),
        "target_h100_hours_per_1B_tokens": TARGET_H100_HOURS_PER_1B,
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""CPU step cost of tiny_cpu on Megatron-Core (our tools/pretrain.py) against a plain PyTorch +
transformers LlamaForCausalLM training loop of the same shape, batch and optimizer.

    python bench/cpu_step.py --compare --rounds 3     # alternates ours / theirs, prints the ratio
    python bench/cpu_step.py --profile                # torch.profiler self time per step, ours minus theirs

Both sides: 4 layers, hidden 64, 4 heads (2 KV groups), FFN 256 SwiGLU, RMSNorm, RoPE, tied
embeddings, vocab 512, seq 128; 2 microbatches of 4 per step (gradient accumulation); AdamW with
the same hyper-parameters and gradient clipping at 1.0; fp32; one process. A step is timed from
the start of the forward pass to the end of the optimizer step, data loading included; the first
``--warmup`` steps are not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "tiny_cpu.yaml"
# tiny: the recipe as shipped. small: 4x wider, where per-op overheads weigh less.
SHAPES = {
    "tiny": [],
    "small": ["model.hidden_size=256", "model.ffn_hidden_size=1024", "model.num_attention_heads=8",
              "model.num_query_groups=4"],
    # MedSafetyWorld's model: 4 x 128, 4 heads, context 128, one microbatch of 32.
    "msw": ["model.hidden_size=128", "model.ffn_hidden_size=512", "model.num_query_groups=4",
            "training.micro_batch_size=32", "training.global_batch_size=32"],
}


def bench_megatron(steps: int, warmup: int, shape: str) -> dict:
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, str(ROOT / "tools" / "pretrain.py"), str(RECIPE),
               f"training.train_iters={steps + warmup}", "training.eval_interval=null",
               "checkpoint.dir=null", f"logging.dir={d}", "logging.log_interval=1", "logging.tensorboard=false",
               "scheduler.lr_warmup_iters=0", *SHAPES[shape]]
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        recs = [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl"))]
    times = [r["step_time_s"] for r in recs if r["step"] > warmup]
    return {"impl": "megatron-core", "median_step_s": statistics.median(times), "steps": len(times)}


def hf_step_fn(shape: str):
    """One training step of the transformers loop (built once; each call is one optimizer step)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from megatron_srp.config import load_recipe

    r = load_recipe(RECIPE, SHAPES[shape])
    m, t, o = r.model, r.training, r.optimizer
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=m.vocab_size, hidden_size=m.hidden_size, intermediate_size=m.ffn_hidden_size,
                      num_hidden_layers=m.num_layers, num_attention_heads=m.num_attention_heads,
                      num_key_value_heads=m.num_query_groups, max_position_embeddings=m.seq_length,
                      rms_norm_eps=m.norm_epsilon, rope_theta=m.rotary_base, tie_word_embeddings=True,
                      attention_bias=False, mlp_bias=False)
    model = LlamaForCausalLM(cfg)
    model.config._attn_implementation = "sdpa"
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(o.adam_beta1, o.adam_beta2), eps=o.adam_eps,
                            weight_decay=o.weight_decay)
    n_micro = t.global_batch_size // t.micro_batch_size

    def step():
        opt.zero_grad(set_to_none=True)
        for _ in range(n_micro):
            ids = torch.randint(0, m.vocab_size, (t.micro_batch_size, m.seq_length + 1))
            out = model(input_ids=ids[:, :-1], labels=ids[:, 1:].contiguous())
            # HF shifts labels itself; passing shifted ids keeps the same token count per step.
            (out.loss / n_micro).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_grad)
        opt.step()

    return step


def bench_hf(steps: int, warmup: int, shape: str) -> dict:
    step = hf_step_fn(shape)
    times = []
    for i in range(steps + warmup):
        t0 = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return {"impl": "transformers LlamaForCausalLM", "median_step_s": statistics.median(times), "steps": len(times)}


def megatron_step_fn(shape: str):
    """One training step of ours, in this process (Trainer.train_step on GPTDataset batches)."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29531")
    from megatron_srp.config import load_recipe
    from megatron_srp.training.data import build_datasets
    from megatron_srp.training.trainer import Trainer

    r = load_recipe(RECIPE, ["training.train_iters=1000", "training.eval_interval=null", "checkpoint.dir=null",
                             f"logging.dir={tempfile.mkdtemp()}", "logging.tensorboard=false", *SHAPES[shape]])
    trainer = Trainer(r)
    batches = trainer._iterators(build_datasets(r)[0], 0)
    return lambda: trainer.train_step(batches)


def profile(shape: str, steps: int = 10) -> None:
    """Operator self time per step under torch.profiler, ours and theirs, largest differences first.
    Each side runs in its own process (ours enables the CPU compatibility layer process-wide)."""
    side = {}
    for impl in ("megatron", "hf"):
        out = subprocess.run([sys.executable, __file__, "--profile-one", impl, "--shape", shape, "--steps", str(steps)],
                             check=True, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        side[impl] = json.loads(out.stdout.strip().splitlines()[-1])
    ours, theirs = side["megatron"], side["hf"]
    print(f"operator self time per step: ours {sum(ours.values()):.1f} ms, theirs {sum(theirs.values()):.1f} ms")
    print(f"{'ours - theirs (ms)':>18}  {'ours':>6}  {'theirs':>6}  operator")
    for d, k in sorted(((ours.get(k, 0) - theirs.get(k, 0), k) for k in set(ours) | set(theirs)), reverse=True)[:25]:
        print(f"{d:18.2f}  {ours.get(k, 0):6.2f}  {theirs.get(k, 0):6.2f}  {k[:90]}")


def profile_one(impl: str, shape: str, steps: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step = megatron_step_fn(shape) if impl == "megatron" else hf_step_fn(shape)
    for _ in range(10):  # warm-up
        step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    print(json.dumps({e.key: e.self_cpu_time_total / 1000 / steps for e in prof.key_averages()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--impl", choices=["megatron", "hf"])
    p.add_argument("--compare", action="store_true")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    p.add_argument("--profile", action="store_true", help="where the step time goes, ours against theirs")
    p.add_argument("--profile-one", choices=["megatron", "hf"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.profile:
        profile(a.shape)
        return
    if a.profile_one:
        profile_one(a.profile_one, a.shape, a.steps)
        return
    if a.impl:
        fn = bench_megatron if a.impl == "megatron" else bench_hf
        print(json.dumps(fn(a.steps, a.warmup, a.shape)))
        return
    ours, theirs = [], []
    for _ in range(a.rounds):  # alternate so drift of the machine hits both
        for impl, acc in (("megatron", ours), ("hf", theirs)):
            out = subprocess.run([sys.executable, __file__, "--impl", impl, "--steps", str(a.steps),
                                  "--warmup", str(a.warmup), "--shape", a.shape], check=True, capture_output=True, text=True)
            acc.append(json.loads(out.stdout.strip().splitlines()[-1])["median_step_s"])
    from megatron_srp.config import load_recipe

    r = load_recipe(RECIPE, SHAPES[a.shape])
    tokens = r.training.global_batch_size * r.model.seq_length
    mo, mt = statistics.median(ours), statistics.median(theirs)
    print(json.dumps({
        "shape": a.shape,
        "megatron_core_step_ms": [round(1000 * x, 1) for x in ours],
        "hf_llama_step_ms": [round(1000 * x, 1) for x in theirs],
        "megatron_core_tokens_per_s": round(tokens / mo),
        "hf_llama_tokens_per_s": round(tokens / mt),
        "step_cost_ratio_ours_over_theirs": round(mo / mt, 3),
    }, indent=2))


if __name__ == "__main__":
    main()

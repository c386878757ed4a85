#!/usr/bin/env python3
"""Wall time and peak RSS of converting the SmolLM2-1.7B shape, both directions, on this machine.

  .venv/bin/python bench/convert.py --work /tmp/bench_convert

Builds a randomly initialised LlamaForCausalLM of the SmolLM2-1.7B shape in bf16 once (not timed),
then times, each in a fresh process: tools/convert_from_hf.py (HF -> torch_dist, parity on),
tools/convert_to_hf.py (torch_dist -> HF, parity on) and convert_to_hf.py --no-verify.
Peak RSS is the largest resident set of the run's process tree (wait4), file-backed pages included.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOLLM2_1P7B = dict(vocab_size=49152, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                    num_attention_heads=32, num_key_value_heads=32, head_dim=64, max_position_embeddings=2048,
                    rms_norm_eps=1e-5, tie_word_embeddings=True,
                    rope_parameters={"rope_type": "default", "rope_theta": 130000.0})


def make_random_model(path: str) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_1P7B))
    model.save_pretrained(path, max_shard_size="2GB")
    return sum(p.numel() for p in model.parameters())


def run(cmd):
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - start
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err[-3000:]}")
    return wall, usage.ru_maxrss / 2**20, json.loads(out)  # GiB


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/bench_convert")
    ap.add_argument("--skip-from-hf", action="store_true", help="reuse WORK/ckpt from an earlier run")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    src = os.path.join(args.work, "hf_random")
    if not os.path.exists(os.path.join(src, "config.json")):
        print("building a random SmolLM2-1.7B-shaped model (not timed) ...", file=sys.stderr)
        n = make_random_model(src)
        with open(os.path.join(args.work, "params.json"), "w") as f:
            json.dump({"parameters": n}, f)
    with open(os.path.join(args.work, "params.json")) as f:
        n = json.load(f)["parameters"]
    bf16_gib = 2 * n / 2**30
    py = sys.executable
    ckpt, out = os.path.join(args.work, "ckpt"), os.path.join(args.work, "hf_out")
    runs = {
        "from_hf (parity on)": [py, "tools/convert_from_hf.py", "--hf", src, "--output", ckpt, "--overwrite",
                                "--no-progress"],
        "to_hf (parity on)": [py, "tools/convert_to_hf.py", "--checkpoint", ckpt, "--output", out, "--overwrite",
                              "--no-progress"],
        "to_hf --no-verify": [py, "tools/convert_to_hf.py", "--checkpoint", ckpt, "--output", out, "--overwrite",
                              "--no-verify", "--no-progress"],
    }
    report = {"parameters": n, "bf16_size_gib": round(bf16_gib, 2), "runs": {}}
    if args.skip_from_hf:
        runs.pop("from_hf (parity on)")
    for name, cmd in runs.items():
        wall, rss, result = run(cmd)
        report["runs"][name] = {"wall_s": round(wall, 1), "peak_rss_gib": round(rss, 2),
                                "peak_rss_over_bf16_size": round(rss / bf16_gib, 2), "parity": result.get("parity")}
        print(f"{name}: {wall:.1f} s, peak RSS {rss:.2f} GiB ({rss / bf16_gib:.2f}x bf16 size)", file=sys.stderr)
    shutil.rmtree(out, ignore_errors=True)
    with open(os.path.join(args.work, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

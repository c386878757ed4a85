#!/usr/bin/env python3
"""Segment a corpus and classify every segment once: one annotation sidecar (parquet) per input shard.

  python tools/annotate.py --input 'data/fineweb_edu/*.jsonl.gz' --output annotations/ \\
      --tokenizer-model tokenizer/ --classifier qwen3guard --classifier-arg model=Qwen3Guard-Gen-0.6B

Rerunning the same command skips finished shards and reuses every cached verdict.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_srp.data.annotate import main as run  # noqa: E402
from megatron_srp.plugins import load_plugins  # noqa: E402


def main(argv=None) -> int:
    load_plugins()  # backends registered outside the data library (--classifier oracle, --rewriter medsafetyworld)
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())

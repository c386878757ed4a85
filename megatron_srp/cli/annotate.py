"""Segment a corpus and classify every segment once: one annotation sidecar (parquet) per input shard.

  python tools/annotate.py --input 'data/fineweb_edu/*.jsonl.gz' --output annotations/ \\
      --tokenizer-model tokenizer/ --classifier qwen3guard --classifier-arg model=Qwen3Guard-Gen-0.6B

Rerunning the same command skips finished shards and reuses every cached verdict.
"""

import sys

from megatron_srp.data.annotate import main as annotate_main
from megatron_srp.errors import exit_2_on_user_error
from megatron_srp.plugins import load_plugins


@exit_2_on_user_error
def main(argv=None) -> int:
    """The flags and their --help are megatron_srp.data.annotate's."""
    load_plugins()  # backends registered outside the data library (--classifier oracle, --rewriter medsafetyworld)
    return annotate_main(argv)


if __name__ == "__main__":
    sys.exit(main())

"""Tokenize a corpus into Megatron indexed datasets (.bin/.idx): plain, or an SRP variant from annotations.

Megatron-LM's flags work as in its tools/preprocess_data.py:

  python tools/preprocess_data.py --input corpus.jsonl --output-prefix data/corpus \\
      --tokenizer-type HuggingFaceTokenizer --tokenizer-model tokenizer/ --append-eod --workers 2

``plain`` output is byte-identical to Megatron-LM's when no document contains a special-token
string or a reflection tag, or with --no-injection-guard; --stats counts the documents the guard
changed (guard_changed_documents).

SRP and the baselines, from the sidecars of tools/annotate.py:

  ... --annotations annotations/ --variant srp       # + data/corpus_text_document.roles.bin/.idx
  ... --annotations annotations/ --variant filter --filter-granularity document
  ... --annotations annotations/ --variant rewrite --rewriter hf --rewriter-arg model=Qwen2.5-7B-Instruct

Outputs appear only when complete (temporary names, then renames; the .idx comes last). Several
input files are tokenized into per-file parts under PREFIX.parts/ (a rerun skips finished parts),
then merged in input order.
"""

import gc
import os
import sys

# Set before numpy is imported. Tokenizing never calls BLAS, but OpenBLAS starts a thread per core at
# import that spins while idle: about 5% of a 100 MB run's CPU on 2 cores, taken from the tokenizer.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from megatron_srp.data.preprocess import main as preprocess_main
from megatron_srp.errors import exit_2_on_user_error
from megatron_srp.plugins import load_plugins


@exit_2_on_user_error
def main(argv=None) -> int:
    """The flags and their --help are megatron_srp.data.preprocess's. ``argv`` None: this process's own
    command line (the console script, tools/preprocess_data.py, ``-m``); a list: a call from Python."""
    load_plugins()  # backends registered outside the data library (--classifier oracle, --rewriter medsafetyworld)
    # Everything imported so far outlives the run: kept out of the collector's passes over the rows'
    # short-lived objects (about 3% of a run's CPU), and handed back after it for in-process callers.
    gc.freeze()
    try:
        return preprocess_main(argv)
    finally:
        if argv is None:
            # The process ends next: everything stays out of the collector, whose pass over every object at
            # the interpreter's exit (awkward's and pyarrow's modules too) took 0.08 s of a 0.85 s run.
            gc.freeze()
        else:
            gc.unfreeze()


if __name__ == "__main__":
    sys.exit(main())

"""Convert a local Hugging Face Llama / SmolLM2 / Qwen3 directory to a torch_dist checkpoint.

  python tools/convert_from_hf.py --hf /models/SmolLM2-1.7B --output ckpt/smollm2 \\
      --recipe recipes/smollm2_1p7b_fineweb_edu_srp_h100_bf16.yaml parallel.tensor_model_parallel_size=2

The recipe gives the training settings (default: recipes/smollm2_1p7b_base.yaml); its model section
is taken from the Hugging Face config.json, and overrides follow as for tools/pretrain.py (before,
between or after the flags). The
checkpoint holds global tensors, so it loads under any TP/PP layout; it is weights-only:
`tools/pretrain.py RECIPE checkpoint.load=OUTPUT` continues pretraining from it with a fresh
optimizer. The Megatron model is reloaded from the written files and its logits compared with the
Hugging Face model's (OUTPUT/parity.json); exit 3 when they differ.
"""

import argparse
import sys

from megatron_srp.errors import exit_2_on_user_error
from megatron_srp.export.convert import add_parity_args, from_hf, parity_from_args, run_cli


@exit_2_on_user_error
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf", required=True, help="Hugging Face model directory (config.json + safetensors)")
    p.add_argument("--output", required=True, help="checkpoint directory to write")
    p.add_argument("--recipe", help="recipe for the training settings (default: recipes/smollm2_1p7b_base.yaml)")
    p.add_argument("overrides", nargs="*", help="key.sub=value recipe overrides")
    add_parity_args(p)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_intermixed_args(argv)  # overrides before or after the flags
    return run_cli(from_hf, hf_dir=args.hf, output=args.output, base_recipe=args.recipe, overrides=args.overrides,
                   verify=not args.no_verify,
                   parity=parity_from_args(args),
                   overwrite=args.overwrite, progress=not args.no_progress)


if __name__ == "__main__":
    sys.exit(main())

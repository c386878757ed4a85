"""Convert a torch_dist checkpoint (any TP/PP/DP layout, TE or local spec) to a Hugging Face directory.

  python tools/convert_to_hf.py --checkpoint runs/tiny_cpu/checkpoints --output hf/tiny_cpu
  python tools/convert_to_hf.py --checkpoint runs/tiny_cpu/checkpoints/iter_0000020 --output hf/step20

--checkpoint is a run folder (the iteration its tracker file names, or --iteration) or one
iter_NNNNNNN folder in it, ours or Megatron-LM's (without a recipe.yaml the model is read from the
`args` Megatron-LM saves in common.pt). Writes LlamaForCausalLM (Qwen3ForCausalLM with
qk-layernorm) as safetensors, config.json, the tokenizer (--tokenizer, or the recipe's
data.tokenizer_model) with a chat template (default: srp, which keeps reflections;
tools/posttrain.py and tools/evaluate.py then need no flag), generation_config.json (eos ids, the
reflection format, the stop behaviour), the recipe, and a model card with metadata (base model,
datasets, license, reflection format, parity figures). Then runs the Megatron model and the
converted model on the same tokens: the output appears only when their logits agree (report:
OUTPUT/parity.json); otherwise the files go to OUTPUT.parity-failed/ and the exit code is 3. Bad
input or a damaged checkpoint: exit 2 naming the file. Files follow the umask. Runs on a CPU.
"""

import argparse
import logging
import sys

from megatron_srp.errors import exit_2_on_user_error
from megatron_srp.export.convert import add_parity_args, parity_from_args, run_cli, to_hf
from megatron_srp.training.layout import TRACKER


def parse_size(text: str) -> int:
    units = {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}
    t = text.strip().upper()
    for u, m in units.items():
        if t.endswith(u):
            return int(float(t[:-2]) * m)
    return int(t)


@exit_2_on_user_error
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help=f"run folder (with {TRACKER}) or one iter_NNNNNNN folder")
    p.add_argument("--iteration", type=int, help="iteration to convert (default: the latest)")
    p.add_argument("--output", required=True, help="Hugging Face model directory to write")
    p.add_argument("--tokenizer", help="tokenizer directory (default: the recipe's data.tokenizer_model)")
    p.add_argument("--chat-template", default="srp", metavar="NAME|FILE",
                   help="chat template written with the tokenizer: srp (default: User:/Assistant: turns that keep "
                        "reflections verbatim, for base models), a Jinja file, or keep (the tokenizer's own); "
                        "refused (exit 2) if it drops or opens reflections")
    p.add_argument("--license", metavar="ID",
                   help="license in the model card's metadata (e.g. apache-2.0; default: the base model's, if its "
                        "card is here, else none)")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto",
                   help="weights dtype (auto: bf16 if the recipe trained in bf16, else fp32)")
    add_parity_args(p)
    p.add_argument("--max-shard-size", default="2GB", help="safetensors shard size (e.g. 2GB, 500MB)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    return run_cli(to_hf, checkpoint=args.checkpoint, output=args.output, iteration=args.iteration,
                   tokenizer=args.tokenizer, dtype=args.dtype, verify=not args.no_verify,
                   parity=parity_from_args(args), chat_template=args.chat_template, license=args.license,
                   max_shard_bytes=parse_size(args.max_shard_size), overwrite=args.overwrite,
                   progress=not args.no_progress)


if __name__ == "__main__":
    sys.exit(main())

"""The command line every recipe-driven tool shares (pretrain, posttrain, evaluate): a YAML file,
``key.sub=value`` overrides before, between or after the flags, and ``--describe``."""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from megatron_srp.config import describe


def recipe_parser(doc: str, positional: str = "recipe") -> argparse.ArgumentParser:
    """A parser with the ``positional`` YAML path, the overrides and ``--describe``; tools add their flags."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(positional, nargs="?", help=f"{positional} YAML")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides (values parsed as YAML)")
    p.add_argument("--describe", action="store_true", help=f"list every {positional} key with its default and meaning")
    return p


def parse_recipe_args(p: argparse.ArgumentParser, argv: Optional[Sequence[str]], config_class,
                      required: Sequence[str] = ("recipe",)) -> Optional[argparse.Namespace]:
    """The parsed arguments, or None once ``--describe`` has printed every key of ``config_class``. A missing
    ``required`` argument is argparse's usage error (exit 2)."""
    args = p.parse_intermixed_args(argv)
    if args.describe:
        print(describe(config_class))
        return None
    missing = [name for name in required if not getattr(args, name)]
    if missing:  # a positional is named as "a recipe path", a flag as "--model"
        positional = {a.dest for a in p._actions if not a.option_strings}
        names = [f"a {m} path" if m in positional else f"--{m}" for m in missing]
        p.error(f"{' and '.join(names)} {'is' if len(names) == 1 else 'are'} required")
    return args

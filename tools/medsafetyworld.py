#!/usr/bin/env python3
"""The path-run form of `python -m megatron_srp.cli.medsafetyworld` (installed as `srp-medsafetyworld`); the code and
its --help are in megatron_srp/cli/medsafetyworld.py."""

import sys

from megatron_srp.cli.medsafetyworld import main

if __name__ == "__main__":
    sys.exit(main())

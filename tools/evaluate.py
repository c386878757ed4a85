#!/usr/bin/env python3
"""The path-run form of `python -m megatron_srp.cli.evaluate` (installed as `srp-evaluate`); the code and
its --help are in megatron_srp/cli/evaluate.py."""

import sys

from megatron_srp.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())

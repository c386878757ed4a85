#!/usr/bin/env python3
"""The path-run form of `python -m megatron_srp.cli.convert_to_hf` (installed as `srp-convert-to-hf`); the code and
its --help are in megatron_srp/cli/convert_to_hf.py."""

import sys

from megatron_srp.cli.convert_to_hf import main

if __name__ == "__main__":
    sys.exit(main())

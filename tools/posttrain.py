#!/usr/bin/env python3
"""The path-run form of `python -m megatron_srp.cli.posttrain` (installed as `srp-posttrain`); the code and
its --help are in megatron_srp/cli/posttrain.py."""

import sys

from megatron_srp.cli.posttrain import main

if __name__ == "__main__":
    sys.exit(main())

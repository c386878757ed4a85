#!/usr/bin/env python3
"""The path-run form of `python -m megatron_srp.cli.pretrain` (installed as `srp-pretrain`); the code and
its --help are in megatron_srp/cli/pretrain.py."""

import sys

from megatron_srp.cli.pretrain import main

if __name__ == "__main__":
    sys.exit(main())

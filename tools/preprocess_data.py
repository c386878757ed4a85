#!/usr/bin/env python3
"""The path-run form of `python -m megatron_srp.cli.preprocess_data` (installed as `srp-preprocess-data`); the code and
its --help are in megatron_srp/cli/preprocess_data.py."""

import sys

from megatron_srp.cli.preprocess_data import main

if __name__ == "__main__":
    sys.exit(main())

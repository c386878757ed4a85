#!/usr/bin/env python3
"""The path-run form of `python -m megatron_srp.cli.annotate` (installed as `srp-annotate`); the code and
its --help are in megatron_srp/cli/annotate.py."""

import sys

from megatron_srp.cli.annotate import main

if __name__ == "__main__":
    sys.exit(main())

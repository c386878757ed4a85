"""The command-line tools: one module per tool, each with ``main(argv=None) -> int``.

Run as ``python -m megatron_srp.cli.TOOL``, as the installed ``srp-TOOL`` script (``[project.scripts]``
in pyproject.toml), or as ``python tools/TOOL.py`` (a two-line shim). This layer sits on top: it may
import every other part of the package, and nothing in the package imports it. A user error (an
``SRPError``) prints ``error: MESSAGE`` and exits 2 (``megatron_srp.errors.exit_2_on_user_error``).
"""

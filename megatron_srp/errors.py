"""The project's one error base.

Every error a user can fix (a bad flag, recipe, input file, corpus, annotation or checkpoint) derives
from ``SRPError``; each tool prints its message and exits 2 through ``exit_2_on_user_error``. Errors of
the code itself (a bug) keep their traceback. Not user errors, so not ``SRPError``: a failed parity check
(``export.convert.ParityError``, exit 3), a failed MedSafetyWorld stage (``StageError``, exit 1, names
its log) and ``FastPathUnavailable`` (caught inside the tokenizer).
"""

from __future__ import annotations

import functools
import sys
from typing import Callable


class SRPError(Exception):
    """A user error: bad input, recipe, data or checkpoint; tools exit 2 with its message."""


def exit_2_on_user_error(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a tool's ``main``: an ``SRPError`` prints ``error: MESSAGE`` on stderr and returns 2."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except SRPError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    return wrapped

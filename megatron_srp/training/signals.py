"""Slurm-friendly exit: SIGTERM / SIGUSR1 mark the run for save-and-exit at the next step.

Every rank installs the handler; at each step boundary the flag is all-reduced (MAX) so that all
ranks agree to stop together even if the signal reached only some of them.
"""

from __future__ import annotations

import signal
import time

import torch

EXIT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class ExitRequest:
    """Collects exit reasons: a signal, the wall-clock limit, or the exit interval."""

    def __init__(self, exit_duration_minutes: float | None, start_time: float | None = None):
        self.received: int | None = None
        self.start = start_time if start_time is not None else time.time()
        self.limit_s = None if exit_duration_minutes is None else exit_duration_minutes * 60.0
        self._previous = {}

    def install(self) -> "ExitRequest":
        for sig in EXIT_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def should_exit(self, device: torch.device) -> str | None:
        """Collective: every rank must call it at the same step. Returns the reason or None."""
        local = 0
        if self.received is not None:
            local = 2
        elif self.limit_s is not None and time.time() - self.start >= self.limit_s:
            local = 1
        flag = torch.tensor([local], dtype=torch.int32, device=device)
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        code = int(flag.item())
        return {0: None, 1: "exit_duration_minutes reached", 2: "signal received"}[code]

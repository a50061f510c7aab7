"""A mixer that fails on demand, for the harness's fault-injection tests (used by import path
`tests.harness.faults:Faulty`, so that worker processes of a comparison find it too)."""

from __future__ import annotations

import os
import signal
import sys
import time

import torch
from torch import Tensor, nn

from seqlab.errors import ConfigError
from seqlab.mixers import Layout, Mixer

FAULTY = "tests.harness.faults:Faulty"
FAULTS = ("none", "nan", "raise", "kill", "exit", "hang")


class Faulty(Mixer):
    """A per-token linear map that misbehaves at training forward number `after + 1`:
    `fault` nan (its output becomes NaN, so training diverges), raise (RuntimeError), kill
    (its process kills itself with SIGKILL), hang (its process writes its pid into the
    folder `armed` and sleeps until it is killed) or none. With `armed` (a file path) the
    fault fires only while that file exists, so a rerun with the same options can run clean."""

    def __init__(
        self, d_model: int, *, fault: str = "none", after: int = 0, armed: str | None = None
    ) -> None:
        super().__init__()
        if fault not in FAULTS:
            raise ConfigError(f"fault must be one of {FAULTS}, got {fault!r}")
        self.fault, self.after, self.armed, self.calls = fault, after, armed, 0
        self.proj = nn.Linear(d_model, d_model)

    def forward(
        self,
        x: Tensor,
        state: dict | None = None,
        *,
        layout: Layout = Layout.CAUSAL,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, dict | None]:
        y = self.proj(x)
        if self.training:
            self.calls += 1
            if self.calls > self.after and (self.armed is None or os.path.exists(self.armed)):
                if self.fault == "nan":
                    y = y * torch.nan
                elif self.fault == "raise":
                    raise RuntimeError("injected fault")
                elif self.fault == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                elif self.fault == "exit":  # a crash that prints why, then leaves at once
                    sys.stderr.write("Fatal: injected native crash\n")
                    sys.stderr.flush()
                    os._exit(3)
                elif self.fault == "hang":
                    with open(os.path.join(self.armed, str(os.getpid())), "w"):
                        pass
                    while True:
                        time.sleep(1)
        return y, state

    def init_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> dict:
        return {}

    def state_size(self, seq_len: int) -> int:
        return 0

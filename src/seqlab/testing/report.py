"""Invariants, their outcomes and the report: the machinery shared by every `check_*`.

An invariant is a named check with a one-line description, a test of whether it applies to
the subject (a skip reason, or None) and a body that raises `AssertionError` (or any other
exception) when the subject breaks it. `run_invariants` runs every invariant, each from
torch's seed 0 in a forked RNG (so the order of invariants changes nothing and the caller's
RNG state is left alone), and collects a `Report` even after failures.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import torch

from seqlab.errors import ConfigError, ConformanceError

Subject = TypeVar("Subject")
Status = Literal["pass", "fail", "skip"]
PASS: Status = "pass"
FAIL: Status = "fail"
SKIP: Status = "skip"


@dataclass(frozen=True)
class Invariant(Generic[Subject]):
    """One property: `check(subject)` raises when the subject breaks it; `skip(subject)`
    returns why it does not apply (None: it applies)."""

    name: str
    description: str
    check: Callable[[Subject], None]
    skip: Callable[[Subject], str | None] = lambda subject: None


@dataclass(frozen=True)
class Outcome:
    """What one invariant found: `status` pass, fail or skip; `detail` the failure message
    or the skip reason (empty on a pass); `seconds` the time it took."""

    name: str
    description: str
    status: Status
    detail: str = ""
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == PASS

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    @property
    def skipped(self) -> bool:
        return self.status == SKIP


@dataclass
class Report:
    """Every invariant of one check, in order, with its outcome.

    `ok` is True when none failed (skipped ones do not count against it); `report[name]` is
    one outcome; `str(report)` is a readable table with each failure's message.
    """

    kind: str
    subject: str
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def passed(self) -> list[str]:
        return [o.name for o in self.outcomes if o.passed]

    @property
    def failed(self) -> list[str]:
        return [o.name for o in self.outcomes if o.failed]

    @property
    def skipped(self) -> list[str]:
        return [o.name for o in self.outcomes if o.skipped]

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.outcomes]

    def __getitem__(self, name: str) -> Outcome:
        for outcome in self.outcomes:
            if outcome.name == name:
                return outcome
        raise KeyError(f"no invariant {name!r}; the report has {self.names}")

    def __iter__(self) -> Iterator[Outcome]:
        return iter(self.outcomes)

    def __len__(self) -> int:
        return len(self.outcomes)

    def summary(self) -> str:
        return (
            f"{self.kind} {self.subject}: {len(self.passed)} passed, {len(self.failed)} failed, "
            f"{len(self.skipped)} skipped"
        )

    def __str__(self) -> str:
        width = max((len(o.name) for o in self.outcomes), default=0)
        lines = [self.summary()]
        for o in self.outcomes:
            head = f"  {o.status.upper():<4}  {o.name:<{width}}  "
            if o.skipped:
                lines.append(f"{head}skipped: {o.detail}")
                continue
            lines.append(f"{head}{o.description}  ({o.seconds:.2f}s)")
            lines.extend(f"        {' ' * width}  {line}" for line in o.detail.splitlines())
        return "\n".join(lines)

    def raise_on_failure(self) -> Report:
        """Raise ConformanceError naming every failed invariant; return self when none did."""
        if self.failed:
            first_lines = [f"{n} ({self[n].detail.splitlines()[0]})" for n in self.failed]
            raise ConformanceError(
                f"{self.kind} {self.subject} fails {len(self.failed)} invariant(s): "
                + "; ".join(first_lines)
                + "\n"
                + str(self),
                self,
            )
        return self


def select(invariants: Sequence[Invariant[Any]], only: Iterable[str] | None) -> set[str]:
    """The names to run; an unknown name in `only` is a ConfigError listing the valid ones."""
    names = [inv.name for inv in invariants]
    if only is None:
        return set(names)
    chosen = {only} if isinstance(only, str) else set(only)
    unknown = sorted(chosen - set(names))
    if unknown:
        raise ConfigError(f"unknown invariant(s) {unknown}; valid invariants: {', '.join(names)}")
    return chosen


def run_invariants(
    kind: str,
    subject_name: str,
    subject: Subject,
    invariants: Sequence[Invariant[Subject]],
    *,
    only: Iterable[str] | None = None,
    raise_on_failure: bool = True,
) -> Report:
    """Run every selected invariant that applies, each from seed 0 in a forked torch RNG, on
    one intra-op thread (the caller's thread count is restored afterwards)."""
    chosen = select(invariants, only)
    report = Report(kind, subject_name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny shapes gain nothing from intra-op threads
    try:
        for invariant in invariants:
            report.outcomes.append(_run_one(invariant, subject, invariant.name in chosen))
    finally:
        torch.set_num_threads(threads)
    return report.raise_on_failure() if raise_on_failure else report


def _run_one(invariant: Invariant[Subject], subject: Subject, chosen: bool) -> Outcome:
    name, description = invariant.name, invariant.description
    if not chosen:
        return Outcome(name, description, SKIP, "not selected")
    start = time.perf_counter()
    try:
        reason = invariant.skip(subject)
        if reason is not None:
            return Outcome(name, description, SKIP, reason)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            invariant.check(subject)
    except AssertionError as err:
        detail = str(err) or f"assertion failed: {_where(err)}"
        return Outcome(name, description, FAIL, detail, time.perf_counter() - start)
    except Exception as err:  # a crash breaks the invariant too; report it and go on
        detail = f"{type(err).__name__}: {err} (at {_where(err)})"
        return Outcome(name, description, FAIL, detail, time.perf_counter() - start)
    return Outcome(name, description, PASS, "", time.perf_counter() - start)


def _where(err: BaseException) -> str:
    """`file:line in function` of the innermost frame that raised `err`."""
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return "unknown location"
    frame = frames[-1]
    return f"{frame.filename}:{frame.lineno} in {frame.name}"

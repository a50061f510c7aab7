"""User-facing errors: the CLI prints their message on one line and exits with code 2."""

from __future__ import annotations

from collections.abc import Iterable


class SeqlabError(Exception):
    """Base class for errors caused by user input (names, shapes, files, configs)."""


class ConfigError(SeqlabError):
    """A config file or override is malformed or names something unknown."""


class UnknownNameError(SeqlabError, KeyError):
    """A registry lookup failed; the message lists the valid names."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]) -> None:
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        super().__init__(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(self.valid)}")

    def __str__(self) -> str:
        return self.args[0]


class CheckpointError(SeqlabError):
    """A checkpoint or saved model is missing, truncated or corrupt."""


class DataError(SeqlabError, ValueError):
    """A corpus, dataset or task cannot provide what was asked of it (a ValueError too: a
    request outside what the data holds)."""


class ShapeError(SeqlabError, ValueError):
    """A tensor has the wrong shape or dtype; the message names the expected one."""


class ConformanceError(SeqlabError):
    """A component fails invariants of the conformance kit (`seqlab.testing`); the message
    names each failed invariant and `report` holds the whole `seqlab.testing.Report`."""

    def __init__(self, message: str, report: object = None) -> None:
        super().__init__(message)
        self.report = report

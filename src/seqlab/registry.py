"""Name -> factory registries with metadata: MIXERS, OBJECTIVES, SAMPLERS, TASKS.

Presets (named experiment configs) are YAML files in `seqlab/presets`, listed by
`seqlab.config.list_presets`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from seqlab.errors import UnknownNameError


@dataclass(frozen=True)
class Entry:
    """One registered component: its factory and what it declares about itself."""

    name: str
    factory: Callable[..., Any]
    description: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


class Registry:
    """A table of named factories of one kind ("mixer", "objective", ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(
        self, name: str, *, description: str = "", **meta: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator registering `factory` under `name`; a second registration is an error."""

        def decorate(factory: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            doc = description or (factory.__doc__ or "").strip().split("\n")[0]
            self._entries[name] = Entry(name, factory, doc, dict(meta))
            return factory

        return decorate

    def get(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self._entries) from None

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name).factory(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


MIXERS = Registry("mixer")
OBJECTIVES = Registry("objective")
SAMPLERS = Registry("sampler")
TASKS = Registry("task")


def build_with_options(registry: Registry, name: str, *args: Any, **options: Any) -> Any:
    """`registry.build(name, *args, **options)`, naming the valid options when one is unknown.

    The valid options are the factory's keyword parameters, or `meta["options"]` when the
    factory forwards `**kwargs`.
    """
    import inspect

    from seqlab.errors import ConfigError

    entry = registry.get(name)
    params = inspect.signature(entry.factory).parameters
    positional = list(params)[: len(args)]
    valid = entry.meta.get("options")
    if valid is None and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        valid = [p for p in params if p not in positional]
    if valid is not None:
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ConfigError(
                f"unknown option(s) {unknown} for {registry.kind} {name!r}; valid options: "
                + (", ".join(sorted(valid)) or "none")
            )
    try:
        inspect.signature(entry.factory).bind(*args, **options)
    except TypeError as err:
        raise ConfigError(f"{registry.kind} {name!r}: bad options {options}: {err}") from None
    return entry.factory(*args, **options)

"""Registries that read the code: MIXERS, OBJECTIVES, SAMPLERS, TASKS, BASELINES,
VALUE_HEADS.

A component registers itself where it is defined (`@MIXERS.register("gla")` on the class, or
on the function for samplers); its options are the keyword parameters of its constructor or
function, read from the signature, and what it declares about itself (a mixer's `layouts`
and `state_kind`, a sampler's `paradigm`) is an attribute of the class or function, so
nothing is stated twice.

Discovery: the first lookup imports every module of the registry's package (a new module in
`seqlab/mixers/` needs no edit anywhere else) and every installed entry point of its group
(`seqlab.mixers`, `seqlab.objectives`, `seqlab.samplers`, `seqlab.tasks`,
`seqlab.baselines`, `seqlab.value_heads`). Any place that
takes a name also takes an import path `package.module:Name`, so a user's component outside
this repository needs no registration at all.

Presets (named experiment configs) are YAML files in `seqlab/presets`, listed by
`seqlab.config.list_presets`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import pkgutil
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from seqlab.config import check_option_types
from seqlab.errors import ConfigError, UnknownNameError

IMPORT_PATH_SEPARATOR = ":"


@dataclass(frozen=True)
class Entry:
    """One component: its name, the class or function itself, and the registry it is in."""

    name: str
    target: Any
    registry: Registry

    @property
    def description(self) -> str:
        """The first paragraph of the target's docstring, on one line."""
        paragraph = (inspect.getdoc(self.target) or "").strip().split("\n\n")[0]
        return " ".join(paragraph.split())

    def declared(self, key: str) -> Any:
        """What the component declares about itself (`layouts`, `state_kind`, `paradigm`)."""
        if key not in self.registry.declarations:
            raise KeyError(f"{self.registry.kind}s declare {sorted(self.registry.declarations)}")
        return getattr(self.target, key, self.registry.declarations[key])

    def parameters(self) -> dict[str, inspect.Parameter]:
        """The options: keyword parameters of the constructor or function, in order, without
        the leading arguments that every component of the registry receives positionally and
        without what seqlab supplies itself (`Registry.supplied`)."""
        params = list(inspect.signature(self.target).parameters.values())
        params = params[self.registry.positional :]
        return {
            p.name: p
            for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.name not in self.registry.supplied
        }

    def options(self) -> dict[str, Any]:
        """Option name -> default (`inspect.Parameter.empty` where the option is required).

        A target that fills some constructor parameters from elsewhere (a mixer takes
        `d_model` from the model config) lists its options with `option_defaults()`."""
        if hasattr(self.target, "option_defaults"):
            return self.target.option_defaults()
        return {name: p.default for name, p in self.parameters().items()}

    def option_lines(self) -> list[str]:
        """One line per option: `name: type = default` (`(required)` without a default)."""
        params = inspect.signature(self.target).parameters
        lines = []
        for name, default in self.options().items():
            annotation = params[name].annotation if name in params else inspect.Parameter.empty
            kind = "" if annotation is inspect.Parameter.empty else f": {type_name(annotation)}"
            value = " (required)" if default is inspect.Parameter.empty else f" = {default!r}"
            lines.append(f"{name}{kind}{value}")
        return lines

    def check_options(self, options: dict[str, Any]) -> None:
        """Raise ConfigError naming the valid options when one is unknown."""
        valid = self.parameters()
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ConfigError(
                f"unknown option(s) {unknown} for {self.registry.kind} {self.name!r}; valid "
                "options: " + (", ".join(valid) or "none")
            )

    def build(self, *args: Any, supplied: dict[str, Any] | None = None, **options: Any) -> Any:
        """Call the target with the registry's leading arguments, what seqlab supplies (e.g. a
        task's `data`) and the user's options, checked by name and by annotation (a string is
        not an int), so that a bad value is a one-line ConfigError, not a traceback."""
        self.check_options(options)
        module = sys.modules.get(getattr(inspect.unwrap(self.target), "__module__", ""), None)
        options = check_option_types(  # lossless conversions pass on (`states: 2.0` -> 2)
            self.parameters(),
            options,
            vars(module) if module is not None else {},
            f"{self.registry.kind} {self.name!r} option ",
        )
        kwargs = {**(supplied or {}), **options}
        try:
            inspect.signature(self.target).bind(*args, **kwargs)
        except TypeError as err:
            raise ConfigError(
                f"{self.registry.kind} {self.name!r}: bad options {options}: {err}"
            ) from None
        return self.target(*args, **kwargs)


def type_name(annotation: Any) -> str:
    """An annotation as written: `int`, `float | None`, `Model` (string annotations as they are)."""
    if isinstance(annotation, str):
        return annotation
    text = str(annotation).replace("typing.", "").replace("collections.abc.", "")
    return getattr(annotation, "__name__", None) if isinstance(annotation, type) else text


class Registry:
    """The components of one kind, found in `package`, in entry-point `group`, or by path.

    `base`: the import path of the class every target must subclass (None for function
    registries), resolved on first use, so that this module imports nothing of seqlab's
    components and every component module may import it.
    `positional`: how many leading parameters every target receives positionally and so are
    not options (samplers: model, prompt, max_new_tokens).
    `declarations`: the attributes a component may declare, with their defaults.
    `group`: the entry-point group of installed plugins.
    `supplied`: constructor parameters that seqlab fills itself, which are not options (a
    task's `data`).
    `stamps_name`: set a class target's `name` attribute to the name it is found by (its
    registered name, entry-point name or import path), so no class restates its name.
    """

    def __init__(
        self,
        kind: str,
        package: str,
        group: str,
        *,
        base: str | None = None,
        supplied: frozenset[str] = frozenset(),
        positional: int = 0,
        declarations: dict[str, Any] | None = None,
        stamps_name: bool = False,
    ) -> None:
        self.kind, self.package = kind, package
        self.group, self.supplied = group, supplied
        self._base = base
        self.positional = positional
        self.declarations = dict(declarations or {})
        self.stamps_name = stamps_name
        self._entries: dict[str, Entry] = {}
        self._by_path: dict[str, Entry] = {}
        self._broken: dict[str, str] = {}
        self._discovered = False

    def register(self, name: str, **declared: Any) -> Callable[[Any], Any]:
        """Decorator: register the class or function under `name`, setting what it declares
        (e.g. `layouts=...` on a mixer) as attributes of the target."""
        unknown = sorted(set(declared) - set(self.declarations))
        if unknown:
            raise TypeError(f"{self.kind}s declare only {sorted(self.declarations)}, got {unknown}")

        def decorate(target: Any) -> Any:
            if name in self._entries and self._entries[name].target is not target:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            for key, value in declared.items():
                setattr(target, key, value)
            if self.stamps_name:
                target.name = name
            self._entries[name] = Entry(name, target, self)
            return target

        return decorate

    def get(self, name: str) -> Entry:
        """The entry registered as `name`, or the object at import path `package.module:Name`."""
        if not isinstance(name, str):
            raise ConfigError(f"a {self.kind} is named by a string, got {name!r}")
        if IMPORT_PATH_SEPARATOR in name:
            return self._from_path(name)
        self.discover()
        if name in self._broken:
            raise ConfigError(self._broken[name])
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self._entries) from None

    def entry_for(self, target: Any) -> Entry:
        """The entry of a class or function given directly (registered or not)."""
        self.discover()
        for entry in self._entries.values():
            if entry.target is target:
                return entry
        self._check_target(target, getattr(target, "__qualname__", repr(target)))
        return self._found(
            f"{target.__module__}{IMPORT_PATH_SEPARATOR}{target.__qualname__}", target
        )

    def build(self, name: str, *args: Any, **options: Any) -> Any:
        return self.get(name).build(*args, **options)

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def discover(self) -> None:
        """Import every module of the package and every entry point of the group, once.

        A module of the package that fails to import raises (it is this library's code). An
        installed entry point that fails to load, or does not name a component of this kind,
        is set aside with a warning: the other components stay usable, and asking for that
        one raises a ConfigError saying why."""
        if self._discovered:
            return
        self._discovered = True
        try:
            package = importlib.import_module(self.package)
            for module in pkgutil.walk_packages(package.__path__, f"{self.package}."):
                importlib.import_module(module.name)
        except BaseException:
            self._discovered = False
            raise
        for point in importlib.metadata.entry_points(group=self.group):
            if point.name in self._entries:
                continue
            try:
                target = point.load()
                self._check_target(target, point.value)
            except Exception as err:
                reason = err if isinstance(err, ConfigError) else f"{type(err).__name__}: {err}"
                self._broken[point.name] = (
                    f"{self.kind} {point.name!r} (entry point {point.value} of {self.group}) "
                    f"cannot be used: {reason}"
                )
                warnings.warn(self._broken[point.name], stacklevel=2)
                continue
            self._entries[point.name] = self._found(point.name, target)

    def _from_path(self, path: str) -> Entry:
        if path in self._by_path:
            return self._by_path[path]
        module_name, _, attribute = path.partition(IMPORT_PATH_SEPARATOR)
        if not module_name or not attribute:
            raise ConfigError(
                f"{self.kind} import path {path!r} must look like package.module:Name"
            )
        try:
            module = importlib.import_module(module_name)
        except Exception as err:
            raise ConfigError(
                f"{self.kind} {path!r}: module {module_name!r} does not import "
                f"({type(err).__name__}: {err})"
            ) from None
        target = module
        for part in attribute.split("."):
            if not hasattr(target, part):
                raise ConfigError(f"{self.kind} {path!r}: {module_name} has no {attribute!r}")
            target = getattr(target, part)
        self._check_target(target, path)
        self.discover()
        for entry in self._entries.values():
            if entry.target is target:
                self._by_path[path] = entry
                return entry
        self._by_path[path] = self._found(path, target)
        return self._by_path[path]

    def _found(self, name: str, target: Any) -> Entry:
        """The entry of a target found outside the package; a class that does not name
        itself is named as it was found."""
        if self.stamps_name and "name" not in vars(target):
            target.name = name
        return Entry(name, target, self)

    def _check_target(self, target: Any, where: str) -> None:
        if self._base is not None:
            module, _, name = self._base.partition(IMPORT_PATH_SEPARATOR)
            base = getattr(importlib.import_module(module), name)
            if not (isinstance(target, type) and issubclass(target, base)):
                raise ConfigError(
                    f"{self.kind} {where!r} is not a {base.__module__}.{base.__qualname__} "
                    f"subclass (got {type(target).__name__})"
                )
        elif not callable(target):
            raise ConfigError(f"{self.kind} {where!r} is not callable")


MIXERS = Registry(
    "mixer",
    "seqlab.mixers",
    "seqlab.mixers",
    base="seqlab.mixers.base:Mixer",
    # defaults: on the Mixer class
    declarations={"layouts": None, "state_kind": None, "linear_in_values": None},
    stamps_name=True,
)
OBJECTIVES = Registry(
    "objective",
    "seqlab.objectives",
    "seqlab.objectives",
    base="seqlab.objectives.base:Objective",
    stamps_name=True,
)
SAMPLERS = Registry(
    "sampler",
    "seqlab.sampling",
    "seqlab.samplers",
    positional=3,
    declarations={"paradigm": "ar", "hyperschedule": False},
)
TASKS = Registry(
    "task",
    "seqlab.data.tasks",
    "seqlab.tasks",
    base="seqlab.data.tasks.base:Task",
    supplied=frozenset({"data"}),
    stamps_name=True,
)
BASELINES = Registry(
    "baseline",
    "seqlab.baselines",
    "seqlab.baselines",
    base="seqlab.baselines.base:Baseline",
    supplied=frozenset({"vocab_size"}),
    stamps_name=True,
)
VALUE_HEADS = Registry(
    "value head",
    "seqlab.heads",
    "seqlab.value_heads",
    base="seqlab.heads.base:ValueHead",
    supplied=frozenset({"d_model"}),
    stamps_name=True,
)

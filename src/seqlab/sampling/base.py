"""What samplers share: one options dataclass, the decorator that lays a sampler's share of it
out as flat keyword options, eval mode around sampling, and option descriptions.

A sampler is written as `fn(model, prompt, max_new_tokens, options, *, own options...)` and
decorated with `@shares(names...)`: the registered function takes the shared options it
names as flat keywords beside its own, and its signature (which the registry reads to
validate, list and document options) shows both. `options` is a `SamplingOptions` holding
the shared ones (the rest at their defaults).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import Tensor, nn

from seqlab.config import require, resolve_annotation
from seqlab.errors import ConfigError
from seqlab.model import unwrap
from seqlab.ops.kv_cache.base import build_policy
from seqlab.sampling.processors import LogitsProcessor, sampling_processors

if TYPE_CHECKING:
    from seqlab.model import Model
    from seqlab.objectives.base import Objective

Stream = Callable[[list[list[int]]], None]
GUIDANCE_SCHEDULES = ("constant", "linear", "increasing")
GUIDANCE_RULES = ("normalized", "unnormalized")
F = TypeVar("F", bound=Callable[..., Any])


StopPredicate = Callable[[Tensor], bool]


class StopCriteria:
    """A row stops after a token in `stop_tokens`, once the decoded text of its new tokens
    contains one of `stop_strings` (needs `decode`, ids -> text), or once one of `stop_when`
    (the row's ids so far `[T]`, prompt included -> bool) says so. The stopping token is kept.
    """

    def __init__(
        self,
        stop_tokens: Sequence[int] = (),
        stop_strings: Sequence[str] = (),
        decode: Callable[[list[int]], str] | None = None,
        stop_when: Sequence[StopPredicate] = (),
    ) -> None:
        if isinstance(stop_strings, str):
            stop_strings = [stop_strings]
        if stop_strings and decode is None:
            raise ConfigError("stop_strings need decode_fn= (a function from token ids to text)")
        self.tokens = set(int(t) for t in stop_tokens)
        self.strings = list(stop_strings)
        self.decode = decode
        self.predicates = list(stop_when)

    def __call__(self, new: list[int], ids: Tensor | None = None) -> bool:
        """Whether a row whose new tokens are `new` (and whose ids so far, prompt included,
        are `ids [T]`, which `stop_when` reads) stops now."""
        if new and new[-1] in self.tokens:
            return True
        if self.strings and any(s in self.decode(new) for s in self.strings):
            return True
        return ids is not None and any(bool(stop(ids)) for stop in self.predicates)


@dataclass(frozen=True)
class SamplingOptions:
    """The keyword options that several samplers share.

    Logits processing (autoregressive): `temperature`, `top_k`, `top_p`, `min_p`,
    `typical_p` (sampling filters), `repetition_penalty`, and the user's own `processors`
    (Hugging Face protocol, applied after them). `seed`: an int (one generator for the batch)
    or, for AR samplers, one int per prompt (a generator per row). Output: `stop_tokens`,
    `stop_strings` (need `decode_fn`, ids -> text), `stop_when` (predicates on a row's ids
    so far `[T]`, prompt included), `stream` (called with each step's new
    tokens per row), `pad_id` (fills rows past their length). Diffusion: the `objective`
    the model was trained with (None: masked diffusion), `steps` per block, `block_size`,
    `cache` (finished blocks in the decode state), class `condition` and classifier-free
    `guidance` γ with its `guidance_schedule` over time (constant, linear, increasing) and
    `guidance_rule` (normalized: tilt x̂_0 only; unnormalized: tilt the whole reverse
    transition); `temperature` and `seed` apply there too. `kv_cache`: a bounded KV cache
    policy for the attention layers of AR decoding, `{policy: exact | window | sink | h2o |
    cluster | infllm, budget: entries per key/value head, ...}` (`seqlab.ops.kv_cache`).
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    processors: Sequence[LogitsProcessor] = ()
    seed: int | Sequence[int] | None = None
    stop_tokens: Sequence[int] = ()
    stop_strings: Sequence[str] = ()
    decode_fn: Callable[[list[int]], str] | None = None
    stop_when: Sequence[StopPredicate] = ()
    stream: Stream | None = None
    pad_id: int = 0
    objective: Objective | str | None = None
    steps: int | None = None
    block_size: int | None = None
    cache: bool = True
    condition: int | list[int] | Tensor | None = None
    guidance: float | None = None
    guidance_schedule: str = "constant"
    guidance_rule: str = "normalized"
    kv_cache: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        """Range-check the options on their way in, naming the valid range."""
        build_policy(self.kv_cache)
        require(
            [
                (
                    _number(self.temperature) and 0 <= self.temperature < math.inf,
                    f"temperature must be a finite number >= 0, got {self.temperature!r}",
                ),
                (
                    self.top_k is None or (_integer(self.top_k) and self.top_k >= 1),
                    f"top_k must be an integer >= 1 (or None: off), got {self.top_k!r}",
                ),
                (
                    self.top_p is None or (_number(self.top_p) and 0 < self.top_p <= 1),
                    f"top_p must lie in (0, 1] (or None: off), got {self.top_p!r}",
                ),
                (
                    self.min_p is None or (_number(self.min_p) and 0 <= self.min_p <= 1),
                    f"min_p must lie in [0, 1] (or None: off), got {self.min_p!r}",
                ),
                (
                    self.typical_p is None or (_number(self.typical_p) and 0 < self.typical_p <= 1),
                    f"typical_p must lie in (0, 1] (or None: off), got {self.typical_p!r}",
                ),
                (
                    self.repetition_penalty is None
                    or (
                        _number(self.repetition_penalty) and 0 < self.repetition_penalty < math.inf
                    ),
                    "repetition_penalty must be a finite number > 0 (or None: off), got "
                    f"{self.repetition_penalty!r}",
                ),
                (
                    self.seed is None
                    or _integer(self.seed)
                    or (
                        isinstance(self.seed, list | tuple)
                        and bool(self.seed)
                        and all(_integer(s) for s in self.seed)
                    ),
                    f"seed must be an integer or a list of integers, got {self.seed!r}",
                ),
                (
                    _integers(self.stop_tokens),
                    f"stop_tokens must be a list of token ids >= 0, got {self.stop_tokens!r}",
                ),
                (
                    _stop_strings(self.stop_strings),
                    f"stop_strings must be non-empty strings, got {self.stop_strings!r}",
                ),
                (_integer(self.pad_id), f"pad_id must be an integer, got {self.pad_id!r}"),
                (
                    self.steps is None or (_integer(self.steps) and self.steps >= 1),
                    f"steps must be an integer >= 1 (or None: one per token), got {self.steps!r}",
                ),
                (
                    self.block_size is None or (_integer(self.block_size) and self.block_size >= 1),
                    f"block_size must be an integer >= 1 (or None), got {self.block_size!r}",
                ),
                (
                    isinstance(self.cache, bool),
                    f"cache must be true or false, got {self.cache!r}",
                ),
                (
                    self.guidance is None
                    or (_number(self.guidance) and math.isfinite(self.guidance)),
                    f"guidance must be a finite number (or None: off), got {self.guidance!r}",
                ),
                (
                    self.guidance_schedule in GUIDANCE_SCHEDULES,
                    f"guidance_schedule must be one of {list(GUIDANCE_SCHEDULES)}, got "
                    f"{self.guidance_schedule!r}",
                ),
                (
                    self.guidance_rule in GUIDANCE_RULES,
                    f"guidance_rule must be one of {list(GUIDANCE_RULES)}, got "
                    f"{self.guidance_rule!r}",
                ),
            ]
        )

    def logits_processors(self) -> list[LogitsProcessor]:
        """The processors these options ask for, then the user's own."""
        return sampling_processors(
            self.temperature,
            self.top_k,
            self.top_p,
            self.min_p,
            self.typical_p,
            self.repetition_penalty,
        ) + list(self.processors)

    def stop_criteria(self) -> StopCriteria:
        return StopCriteria(self.stop_tokens, self.stop_strings, self.decode_fn, self.stop_when)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _integers(values: Any) -> bool:
    return isinstance(values, list | tuple | set) and all(_integer(v) and v >= 0 for v in values)


def _stop_strings(values: Any) -> bool:
    values = [values] if isinstance(values, str) else values
    return isinstance(values, list | tuple) and all(isinstance(v, str) and v for v in values)


# The usual shares: AR decoding that samples, and AR decoding that may end rows early.
FILTERS = ("temperature", "top_k", "top_p", "min_p", "typical_p", "seed")
PROCESSING = ("repetition_penalty", "processors")
OUTPUT = ("stop_tokens", "stop_strings", "decode_fn", "stop_when", "stream", "pad_id")
MEMORY = ("kv_cache",)
DENOISING = ("objective", "steps", "block_size", "cache", "temperature", "seed")
GUIDANCE = ("condition", "guidance", "guidance_schedule", "guidance_rule")

_FIELDS = {f.name: f for f in dataclasses.fields(SamplingOptions)}
# The fields' types resolved here, so that a sampler's signature carries real types wherever
# the sampler is defined (a name imported only for type checking stays a string, unchecked).
_FIELD_TYPES = {
    name: resolve_annotation(f.type, globals()) or f.type for name, f in _FIELDS.items()
}


def shares(*names: str, **defaults: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: a sampler `fn(model, prompt, max_new_tokens, options, *, own...)` becomes
    `sampler(model, prompt, max_new_tokens, *, own..., shared...)`, taking the shared options
    `names` as flat keywords (`defaults` replaces their `SamplingOptions` defaults for this
    sampler) and passing them to `fn` as one `SamplingOptions`."""
    unknown = sorted(set(names) - set(_FIELDS))
    if unknown:
        raise TypeError(f"not shared options: {unknown}; shared: {sorted(_FIELDS)}")
    stray = sorted(set(defaults) - set(names))
    if stray:
        raise TypeError(f"defaults for options the sampler does not take: {stray}")
    shared = tuple(dict.fromkeys(names))
    fixed = {
        name: inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=defaults.get(name, _FIELDS[name].default),
            annotation=_FIELD_TYPES[name],
        )
        for name in shared
    }

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn)
        params = list(signature.parameters.values())
        own = params[4:]
        clash = sorted(p.name for p in own if p.name in fixed)
        if clash or any(p.kind is not p.KEYWORD_ONLY for p in own):
            raise TypeError(
                f"{fn.__qualname__}: after (model, prompt, max_new_tokens, options) a sampler "
                f"takes keyword-only options of its own (shared ones clash: {clash})"
            )

        @functools.wraps(fn)
        def sampler(model: Any, prompt: Any, max_new_tokens: int, **options: Any) -> Any:
            given = {name: options.pop(name) for name in shared if name in options}
            gathered = SamplingOptions(**{**defaults, **given})
            return fn(model, prompt, max_new_tokens, gathered, **options)

        sampler.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*params[:3], *own, *fixed.values()]
        )
        return sampler

    return decorate


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put `modules` in eval mode, and give every submodule back its own training mode on
    exit, also when the body raises."""
    modes = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def refuse_value_head(*modules: nn.Module) -> None:
    """A ConfigError for a model with a value head: a token sampler would ignore its values."""
    if any(getattr(unwrap(m), "value_head", None) is not None for m in modules):
        raise ConfigError(
            "this model has a value head (model.value_head) and token samplers pass no values; "
            "roll it forward with seqlab.sampling.marked.rollout_events"
        )


def in_eval_mode(fn: F) -> F:
    """Decorator of every token sampler's decoding function: run `fn` with the modules among
    its arguments in eval mode (`eval_mode`), refusing a model with a value head
    (`refuse_value_head`)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        modules = [a for a in (*args, *kwargs.values()) if isinstance(a, nn.Module)]
        refuse_value_head(*modules)
        with eval_mode(*modules):
            return fn(*args, **kwargs)

    return run  # type: ignore[return-value]


def seed_generator(model: Model, seed: object, sampler: str) -> torch.Generator | None:
    """One generator on the model's device for samplers that take one integer seed (None:
    torch's global generator)."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError(f"the {sampler} sampler takes one integer seed (or none), got {seed!r}")
    return None if seed is None else torch.Generator(device=model.device).manual_seed(seed)

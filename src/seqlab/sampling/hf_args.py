"""Hugging Face's `generate` keywords as aliases of seqlab's own, translated in one place.

`seqlab.generate` accepts, besides its own names:

| Hugging Face            | seqlab                                                        |
|-------------------------|---------------------------------------------------------------|
| `do_sample`             | sampler `sample` (True) or `greedy` (False)                   |
| `num_beams` > 1         | sampler `beam`                                                |
| `num_beam_groups` > 1   | sampler `diverse_beam`, its `num_groups`                      |
| `assistant_model`       | sampler `speculative`, its `draft_model`                      |
| `num_assistant_tokens`  | `num_draft_tokens`                                            |
| `logits_processor`      | `processors` (applied after seqlab's own filters)             |
| `stopping_criteria`     | `stop_when` (each criterion called as `(ids [1, T], None)`)   |
| `eos_token_id`          | `stop_tokens` (and `pad_id`, as Hugging Face, when none given)|
| `pad_token_id`          | `pad_id`                                                      |
| `streamer`              | `stream` (`put` gets the prompt, then each step's new tokens; |
|                         | `end` when generation returns)                                |

`max_new_tokens`, `temperature`, `top_k`, `top_p` are seqlab's names already. The sampler is
chosen from `do_sample`, `num_beams`, `num_beam_groups` and `assistant_model` when none is
named; a named one must agree with them. An alias given beside seqlab's name with another
value, or a combination seqlab has no decoder for (beam sampling), is a ConfigError.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from seqlab.errors import ConfigError
from seqlab.registry import SAMPLERS


class Streamer(Protocol):
    """Hugging Face's streamer protocol (`transformers.TextStreamer` and its kin)."""

    def put(self, value: Tensor) -> None: ...

    def end(self) -> None: ...


def _token_list(value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        tokens = [value]
    elif isinstance(value, Tensor):
        tokens = [int(t) for t in value.flatten().tolist()]
    elif isinstance(value, list | tuple) and all(isinstance(t, int) for t in value):
        tokens = list(value)
    else:
        raise ConfigError(f"eos_token_id must be an int or a list of ints, got {value!r}")
    if not tokens:
        raise ConfigError(f"eos_token_id must name at least one token id, got {value!r}")
    return tokens


class HFStop:
    """A Hugging Face stopping criterion `(input_ids [B, T], scores) -> bool or [B] bool` as a
    seqlab `stop_when` predicate on one row's ids `[T]` (scores are not kept: None)."""

    def __init__(self, criterion: Callable[..., Any]) -> None:
        self.criterion = criterion

    def __call__(self, ids: Tensor) -> bool:
        return bool(torch.as_tensor(self.criterion(ids[None], None)).any())


class StreamTo:
    """seqlab's `stream` callback feeding a Hugging Face streamer (one prompt)."""

    def __init__(self, streamer: Streamer) -> None:
        if not callable(getattr(streamer, "put", None)) or not callable(
            getattr(streamer, "end", None)
        ):
            raise ConfigError(f"streamer must have put(tokens) and end(), got {streamer!r}")
        self.streamer = streamer

    def __call__(self, new: list[list[int]]) -> None:
        if new[0]:
            self.streamer.put(torch.tensor(new[0], dtype=torch.long))


def _stopping(value: Any) -> list[HFStop]:
    return [HFStop(c) for c in (value if isinstance(value, Sequence) else [value])]


# alias -> (seqlab's name, conversion)
RENAMED: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "logits_processor": ("processors", list),
    "stopping_criteria": ("stop_when", _stopping),
    "eos_token_id": ("stop_tokens", _token_list),
    "pad_token_id": ("pad_id", lambda v: v),
    "assistant_model": ("draft_model", lambda v: v),
    "num_assistant_tokens": ("num_draft_tokens", lambda v: v),
    "num_beam_groups": ("num_groups", lambda v: v),
    "streamer": ("stream", StreamTo),
}
# the options from which the sampler follows, in seqlab's names
CHOOSING = ("do_sample", "num_beams", "num_groups", "draft_model")
FILTER_NEUTRAL = {"temperature": (0.0, 1.0), "top_k": (None,), "top_p": (None, 1.0)}


def _agrees(convert: Callable[[Any], Any], own: Any, value: Any) -> bool:
    """Whether seqlab's own option `own` says what an alias converted to `value` says (`own`
    put through the alias's conversion too: `stop_tokens=3` agrees with `eos_token_id=[3]`)."""
    if own is value:
        return True
    try:
        return bool(convert(own) == value)
    except (ConfigError, TypeError):  # not a value the alias takes: they cannot agree
        return False


def implied_sampler(options: dict[str, Any]) -> str:
    """The seqlab sampler Hugging Face's choice of decoding names."""
    do_sample = bool(options.get("do_sample", False))
    beams, groups = options.get("num_beams", 1), options.get("num_groups", 1)
    if "draft_model" in options:
        if beams != 1:
            raise ConfigError(
                f"assistant_model (speculative decoding) decodes one beam, got num_beams={beams}"
            )
        return "speculative"
    if beams != 1 or groups != 1:
        if do_sample:
            raise ConfigError(
                "do_sample=True with num_beams > 1 (beam sampling) has no seqlab decoder; "
                "beam and diverse_beam are deterministic"
            )
        return "diverse_beam" if groups != 1 else "beam"
    return "sample" if do_sample else "greedy"


def translate(sampler: str | None, options: dict[str, Any]) -> tuple[str, dict[str, Any], Any]:
    """`(sampler, options)` in seqlab's names, and the Hugging Face streamer (or None)."""
    options = dict(options)
    renamed: dict[str, str] = {}
    for alias, (name, convert) in RENAMED.items():
        if alias not in options:
            continue
        value = options.pop(alias)
        if value is None:  # Hugging Face's "use the default"
            continue
        value = convert(value)
        if name in options and not _agrees(convert, options[name], value):
            raise ConfigError(f"{alias}= and seqlab's {name}= disagree; give one of them")
        options[name], renamed[name] = value, alias
    if "stop_tokens" in renamed and "pad_id" not in options:
        options["pad_id"] = options["stop_tokens"][0]  # Hugging Face pads with eos
    chosen = [key for key in CHOOSING if key in options]
    # Hugging Face decodes greedily unless do_sample=True (when no sampler is named)
    sampling = options.get("do_sample", None if sampler else False)
    if sampler is None:
        sampler = implied_sampler(options)
    else:
        foreign = [key for key in chosen if key not in SAMPLERS.get(sampler).parameters()]
        implied = implied_sampler(options) if foreign else sampler
        if implied != sampler:
            given = ", ".join(f"{renamed.get(k, k)}={options[k]!r}" for k in foreign)
            raise ConfigError(f"{given} asks for sampler {implied!r}, not {sampler!r}")
    takes = SAMPLERS.get(sampler).parameters()
    for key in chosen:
        if key not in takes:
            options.pop(key)
    if sampling is False:
        _drop_neutral_filters(options, takes)
    for name, alias in renamed.items():
        if name in options and name not in takes:
            raise ConfigError(f"{alias}= (seqlab's {name}) is not an option of sampler {sampler!r}")
    streamer = options["stream"].streamer if isinstance(options.get("stream"), StreamTo) else None
    return sampler, options, streamer


def _drop_neutral_filters(options: dict[str, Any], takes: dict[str, Any]) -> None:
    """Without sampling, Hugging Face ignores the sampling filters: drop those at their
    neutral values, refuse any other value."""
    for name, neutral in FILTER_NEUTRAL.items():
        if name in options and name not in takes:
            if options[name] not in neutral:
                raise ConfigError(f"{name}={options[name]!r} needs do_sample=True")
            options.pop(name)


@contextlib.contextmanager
def streaming(streamer: Streamer | None, prompt: Tensor | Sequence[Tensor]) -> Iterator[None]:
    """Hugging Face's streamer order: the prompt first, the new tokens as they come (through
    the `stream` option), then `end()`, also when sampling raises."""
    if streamer is None:
        yield
        return
    if len(prompt) != 1:
        raise ConfigError(f"a streamer follows one prompt, got {len(prompt)}")
    streamer.put(prompt[0][None].cpu())
    try:
        yield
    finally:
        streamer.end()

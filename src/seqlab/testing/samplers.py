"""`check_sampler`: invariants of a decoder on tiny attention models.

The model is a 2-layer attention model (d_model 32, 4 heads, init std 0.3 so predictions
vary) over a data vocabulary of 11: plus the mask token (or the objective's extra tokens)
for a diffusion sampler, plus the start/stop token for an insertion sampler, times `heads`
for a sampler that reads multi-token-prediction heads. A required option typed as a model
(a speculative draft) gets a second tiny model.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from seqlab.config import ModelConfig
from seqlab.errors import ConfigError
from seqlab.model import Model, build_model
from seqlab.objectives import build_objective
from seqlab.registry import SAMPLERS, Entry
from seqlab.sampling import Generation, generate
from seqlab.sampling.ar import as_prompt
from seqlab.testing.report import Invariant, Report, run_invariants

VOCAB = 11
MAX_NEW = 6
PROMPT = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
RAGGED = [[1, 2, 3, 4], [5], [6, 7]]


@dataclass
class SamplerSubject:
    entry: Entry
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def paradigm(self) -> str:
        return self.entry.declared("paradigm")

    def model_vocab(self) -> int:
        if self.paradigm != "ar":
            # diffusion: the objective option (masked diffusion by default); another paradigm
            # (insertion): the objective of its name
            default = "masked_diffusion" if self.paradigm == "diffusion" else self.paradigm
            objective = self.options.get("objective") or default
            if isinstance(objective, str):
                objective = build_objective(objective)
            return objective.model_vocab_size(VOCAB)
        if "heads" in self.entry.parameters():
            return VOCAB * int(self.options.get("heads", self.entry.options()["heads"]))
        return VOCAB

    def model(self, seed: int = 0) -> Model:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            config = ModelConfig(
                mixer="attention",
                d_model=32,
                n_layers=2,
                n_heads=4,
                vocab_size=self.model_vocab(),
                init_std=0.3,
            )
            return build_model(config).eval()

    def run(self, model: Model, prompt: Any, **changes: Any) -> Generation:
        options = {**self.filled_options(), **changes}
        if self.entry.name in SAMPLERS or _resolves(self.entry):
            return generate(
                model, prompt, max_new_tokens=MAX_NEW, sampler=self.entry.name, **options
            )

        return self.entry.build(model, as_prompt(prompt, model.device), MAX_NEW, **options)

    def filled_options(self) -> dict[str, Any]:
        """The options given, plus a second tiny model for every required model option."""
        options = dict(self.options)
        for name, param in self.entry.parameters().items():
            if name in options or param.default is not inspect.Parameter.empty:
                continue
            if "Model" in str(param.annotation):
                options[name] = self.model(seed=1)
        return options

    def takes_seed(self) -> bool:
        return "seed" in self.entry.parameters()


def _resolves(entry: Entry) -> bool:
    try:
        return SAMPLERS.get(entry.name).target is entry.target
    except ConfigError:
        return False


def sampler_subject(name_or_function: str | Callable[..., Any], options: dict) -> SamplerSubject:
    if isinstance(name_or_function, str):
        entry = SAMPLERS.get(name_or_function)
    elif callable(name_or_function):
        entry = SAMPLERS.entry_for(name_or_function)
    else:
        raise ConfigError(
            f"check_sampler takes a sampler name or function, got {name_or_function!r}"
        )
    subject = SamplerSubject(entry, dict(options))
    entry.check_options(options)
    missing = [
        name
        for name, p in entry.parameters().items()
        if p.default is inspect.Parameter.empty and name not in subject.filled_options()
    ]
    if missing:
        raise ConfigError(f"sampler {entry.name!r} needs option(s) {missing}")
    return subject


def generated_rows(out: Generation) -> list[list[int]]:
    tokens = out.tokens
    lengths = out.lengths if out.lengths is not None else [tokens.shape[1]] * tokens.shape[0]
    return [tokens[i, : int(n)].tolist() for i, n in enumerate(lengths)]


def prompts(s: SamplerSubject) -> list[list[list[int]]]:
    """Equal-length prompts; an autoregressive sampler also gets prompts of three lengths."""
    return [PROMPT, RAGGED] if s.paradigm == "ar" else [PROMPT]


def check_prompt_kept(s: SamplerSubject) -> None:
    """Each output row starts with its own prompt (equal lengths, and ragged for AR)."""
    model = s.model()
    for batch in prompts(s):
        rows = generated_rows(s.run(model, batch, **_seed(s)))
        assert len(rows) == len(batch), f"{len(rows)} rows for {len(batch)} prompts"
        for i, (row, prompt) in enumerate(zip(rows, batch, strict=True)):
            start = row[: len(prompt)]
            assert start == prompt, f"row {i} starts {start}, its prompt is {prompt}"


def check_prompt_fixed(s: SamplerSubject) -> None:
    """A diffusion sampler never changes the prompt while it denoises: every model forward
    (without a cache, so each reads the canvas from position 0) holds the prompt unchanged
    after the class token, if any, or in the clean half of a vectorised [x_t ; x_0] pass of
    length 2L (block diffusion read at another block size, as `arpc`'s AR pass)."""
    model = s.model()
    inputs: list[Tensor] = []
    hook = model.register_forward_pre_hook(lambda _, args: inputs.append(args[0].clone()))
    changes = {"cache": False} if "cache" in s.entry.parameters() else {}
    try:
        s.run(model, PROMPT, **_seed(s), **changes)
    finally:
        hook.remove()
    assert inputs, "the sampler never called the model"
    prompt = torch.tensor(PROMPT, device=model.device)
    for x in inputs:
        rows = x[: prompt.shape[0]]  # guidance appends the null-class rows
        offsets = (0, 1, x.shape[1] // 2) if x.shape[1] % 2 == 0 else (0, 1)
        kept = any(torch.equal(rows[:, o : o + prompt.shape[1]], prompt) for o in offsets)
        assert kept, (
            f"a denoising forward reads {rows.tolist()}, which does not start with the "
            f"prompt {PROMPT} (after a class token, if any)"
        )


def _not_diffusion(s: SamplerSubject) -> str | None:
    if s.paradigm != "diffusion":
        return "not a diffusion sampler: it never rewrites the prompt (prompt_kept checks it)"
    return None


def check_valid_tokens(s: SamplerSubject) -> None:
    """Each row adds exactly max_new_tokens (6; at most 6 when a stop option is given or the
    sampler inserts, choosing when to stop), and every token lies in [0, 11), the data
    vocabulary (no mask, start or extra-head ids)."""
    model = s.model()
    # an insertion model chooses its own length (its stop action)
    may_stop = s.paradigm == "insertion" or any(
        s.options.get(k) for k in ("stop_tokens", "stop_strings")
    )
    for batch in prompts(s):
        out = s.run(model, batch, **_seed(s))
        for i, (row, prompt) in enumerate(zip(generated_rows(out), batch, strict=True)):
            added = len(row) - len(prompt)
            assert 0 <= added <= MAX_NEW, f"row {i} adds {added} tokens, at most {MAX_NEW} asked"
            assert may_stop or added == MAX_NEW, (
                f"row {i} adds {added} tokens, {MAX_NEW} asked and no stop option given"
            )
            bad = [t for t in row if not 0 <= t < VOCAB]
            assert not bad, f"row {i} holds tokens {bad} outside [0, {VOCAB})"


def check_reproducible(s: SamplerSubject) -> None:
    """Two runs give the same tokens (with the same `seed` option when the sampler takes
    one), whatever torch's global RNG did in between."""
    model = s.model()
    for batch in prompts(s):
        outputs: list[Tensor] = []
        for global_seed in (11, 12):
            torch.manual_seed(global_seed)
            outputs.append(s.run(model, batch, **_seed(s)).tokens)
        assert torch.equal(outputs[0], outputs[1]), (
            f"two runs differ: {outputs[0].tolist()} vs {outputs[1].tolist()}"
        )


def _seed(s: SamplerSubject) -> dict[str, Any]:
    return {"seed": s.options.get("seed", 5)} if s.takes_seed() else {}


SAMPLER_INVARIANTS: tuple[Invariant[SamplerSubject], ...] = (
    Invariant("prompt_kept", "every output row starts with its prompt", check_prompt_kept),
    Invariant(
        "prompt_fixed",
        "a diffusion sampler's every forward reads the prompt unchanged",
        check_prompt_fixed,
        _not_diffusion,
    ),
    Invariant(
        "valid_tokens",
        "at most max_new_tokens are added, all in the data vocabulary",
        check_valid_tokens,
    ),
    Invariant(
        "reproducible",
        "the same seed (or none, for a deterministic sampler) reproduces the output",
        check_reproducible,
    ),
)
SAMPLER_INVARIANT_NAMES: tuple[str, ...] = tuple(inv.name for inv in SAMPLER_INVARIANTS)


def check_sampler(
    name_or_function: str | Callable[..., Any],
    *,
    only: Iterable[str] | None = None,
    raise_on_failure: bool = True,
    **options: Any,
) -> Report:
    """Run every sampler invariant; return the Report (see `check_mixer` for `only` and
    `raise_on_failure`). `options` go to the sampler (as in `seqlab.generate`)."""
    subject = sampler_subject(name_or_function, options)
    return run_invariants(
        "sampler",
        repr(subject.entry.name),
        subject,
        SAMPLER_INVARIANTS,
        only=only,
        raise_on_failure=raise_on_failure,
    )

"""`check_mixer`: the Mixer interface's invariants, run for whatever the mixer declares.

Exactness checks run in float64 on odd, tiny shapes (d_model 32, 4 heads, weights from
`init_weights(0.1, 0.1)`); split and decode results must match the full pass to rtol 1e-9,
atol 1e-10, and causality is an exact zero gradient from every future input.

A mixer whose causal layout reads its first P = `noncausal_prefix` positions non-causally
(JRT-RNN) is checked past them: the causal checks' sequences grow by P, every split and
the start of token-by-token decoding come after a prefill of the whole prefix, an output
inside the prefix may read the whole prefix and nothing after it, and the learning check
scores only targets after the prefix (the AR loss inside it would read its own targets).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from seqlab.config import ModelConfig
from seqlab.errors import ConfigError
from seqlab.io import load, save
from seqlab.layout import Layout, LayoutKind
from seqlab.mixers.base import Mixer
from seqlab.model import build_model
from seqlab.objectives import Batch, build_objective
from seqlab.registry import MIXERS, Entry
from seqlab.state import map_state
from seqlab.testing.report import Invariant, Report, run_invariants

D_MODEL = 32
N_HEADS = 4
N_LAYERS = 2
RTOL, ATOL = 1e-9, 1e-10


@dataclass
class MixerSubject:
    """A mixer class under test: how to name it in a model config, what it declares, its
    options, and (when it cannot be built by name) why the model-level checks cannot run."""

    name: str
    cls: type[Mixer]
    options: dict[str, Any] = field(default_factory=dict)
    layouts: frozenset[LayoutKind] = frozenset({LayoutKind.CAUSAL})
    state_kind: str = "fixed"
    unbuildable: str | None = None
    prefix: int = 0  # the built mixer's noncausal_prefix

    def config(self, **fields: Any) -> ModelConfig:
        return ModelConfig(
            mixer=self.name,
            d_model=D_MODEL,
            n_layers=N_LAYERS,
            n_heads=N_HEADS,
            mixer_options={self.name: dict(self.options)} if self.options else {},
            **fields,
        )

    def mixer(self, dtype: torch.dtype = torch.float64) -> Mixer:
        """Layer 0 of a 2-layer d_model-32 model, weights N(0, 0.1), in `dtype`."""
        mixer = self.cls.from_config(self.config(), 0, **self.options)
        mixer.init_weights(0.1, 0.1)
        return mixer.to(dtype)

    def declares(self, kind: LayoutKind) -> bool:
        return kind in self.layouts


def mixer_subject(name_or_class: str | type[Mixer], options: dict[str, Any]) -> MixerSubject:
    """Resolve a registered name, an import path `package.module:Name` or a Mixer subclass
    (registered or not); unknown names, bad paths and non-Mixers raise (user errors)."""
    if isinstance(name_or_class, str):
        entry = MIXERS.get(name_or_class)
    elif isinstance(name_or_class, type):
        entry = MIXERS.entry_for(name_or_class)
    else:
        raise ConfigError(
            f"check_mixer takes a mixer name, an import path or a Mixer subclass, got "
            f"{name_or_class!r}"
        )
    subject = MixerSubject(
        name=entry.name,
        cls=entry.target,
        options=dict(options),
        layouts=frozenset(LayoutKind(k) for k in entry.declared("layouts")),
        state_kind=entry.declared("state_kind"),
        unbuildable=_unbuildable(entry),
    )
    with torch.random.fork_rng(devices=[]):
        built = subject.mixer()  # unknown or missing options are the caller's error: raise them
    # Options may change what the mixer declares (a memory cache makes it causal and growing).
    subject.layouts = frozenset(LayoutKind(k) for k in built.layouts)
    subject.state_kind = built.state_kind
    subject.prefix = built.noncausal_prefix
    return subject


def _unbuildable(entry: Entry) -> str | None:
    """Why `build_model` cannot find this class by its name (None: it can)."""
    if entry.name in MIXERS:
        return None
    try:
        found = MIXERS.get(entry.name).target
    except ConfigError as err:
        return (
            f"{entry.target.__qualname__} cannot be found by import path ({err}); define it at "
            "module level to check models built from it"
        )
    if found is not entry.target:
        return f"import path {entry.name} names another object than the class given"
    return None


# --- the invariants ------------------------------------------------------------------------


def assert_close(actual: Tensor, expected: Tensor, what: str) -> None:
    try:
        torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL)
    except AssertionError as err:
        raise AssertionError(f"{what}: {err}") from None


def check_split_decode(s: MixerSubject) -> None:
    """13 tokens: a split at 5 carried through the state, and token-by-token decode (P + 13
    tokens, split at P + 5, decode after a prefill of P, with a non-causal prefix of P)."""
    mixer = s.mixer()
    P = s.prefix
    x = torch.randn(2, 13 + P, D_MODEL, dtype=torch.float64)
    full, _ = mixer(x)
    state = mixer.init_state(2, dtype=torch.float64)
    head, state_a = mixer(x[:, : 5 + P], state)
    tail, _ = mixer(x[:, 5 + P :], state_a)
    assert_close(
        torch.cat([head, tail], 1), full, f"prefill {5 + P} then 8 tokens vs the full pass"
    )
    state = mixer.init_state(2, dtype=torch.float64)
    steps = []
    if P:
        y, state = mixer(x[:, :P], state)
        steps.append(y)
    for t in range(P, x.shape[1]):
        y, state = mixer(x[:, t : t + 1], state)
        steps.append(y)
    assert_close(torch.cat(steps, 1), full, "token-by-token decode vs the full pass")


def check_chunk_split(s: MixerSubject) -> None:
    """T = 150 spans three 64-step chunks; the split point falls inside the second."""
    mixer = s.mixer()
    P = s.prefix
    x = torch.randn(1, 150 + P, D_MODEL, dtype=torch.float64)
    full, _ = mixer(x)
    head, state = mixer(x[:, : 67 + P], mixer.init_state(1, dtype=torch.float64))
    tail, _ = mixer(x[:, 67 + P :], state)
    assert_close(torch.cat([head, tail], 1), full, "150 tokens split at 67 vs the full pass")


def check_causality(s: MixerSubject) -> None:
    """Output t has an exactly zero gradient from every input after t, and a nonzero one
    from some input up to t. With a non-causal prefix of P, outputs 0, P + 4, P + 9 of
    P + 11, and "after t" means after max(t, P - 1)."""
    mixer = s.mixer()
    P = s.prefix
    x = torch.randn(1, 11 + P, D_MODEL, dtype=torch.float64, requires_grad=True)
    y, _ = mixer(x)
    for t in sorted({0, 4 + P, 9 + P}):
        (grad,) = torch.autograd.grad(y[:, t].sum(), x, retain_graph=True)
        last = max(t, P - 1)
        future = grad[:, last + 1 :].abs().max()
        assert future == 0, f"output {t} reads the future (gradient {float(future):.3g})"
        assert grad[:, : last + 1].abs().max() > 0, f"output {t} reads nothing"


def check_bidirectional(s: MixerSubject) -> None:
    """Under the bidirectional layout, the first output reads later inputs."""
    mixer = s.mixer()
    x = torch.randn(1, 9, D_MODEL, dtype=torch.float64, requires_grad=True)
    y, _ = mixer(x, layout=Layout.BIDIRECTIONAL)
    (grad,) = torch.autograd.grad(y[:, 0].sum(), x)
    assert grad[:, 1:].abs().max() > 0, "output 0 reads no later input under bidirectional"


BLOCK_DIFFUSION_CASES = ((10, 4), (8, 1), (6, 6))


def check_block_diffusion_cached_prefix(s: MixerSubject) -> None:
    """[x_t ; x_0] in one pass equals what block-wise sampling computes: prefill the clean
    blocks before j block-causally into the state (or KV cache), then read x_t^j
    bidirectionally from it; the clean half equals a block-causal pass over x_0. For
    (length, block) in (10, 4), (8, 1), (6, 6), each case from seed 0."""
    for length, block in BLOCK_DIFFUSION_CASES:
        torch.manual_seed(0)
        mixer = s.mixer()
        x_t, x_0 = torch.randn(2, 2, length, D_MODEL, dtype=torch.float64)
        positions = torch.arange(length).repeat(2)
        layout = Layout.block_causal(block)
        y, _ = mixer(
            torch.cat([x_t, x_0], 1), layout=Layout.block_diffusion(block), positions=positions
        )
        case = f"length {length}, block {block}"
        for start in range(0, length, block):
            end = min(start + block, length)
            state = mixer.init_state(2, dtype=torch.float64)
            if start:
                _, state = mixer(x_0[:, :start], state, layout=layout)
            expected, _ = mixer(x_t[:, start:end], state, layout=Layout.BIDIRECTIONAL)
            assert_close(
                y[:, start:end], expected, f"{case}: noised block at {start} vs the cached read"
            )
        assert_close(
            y[:, length:],
            mixer(x_0, layout=layout)[0],
            f"{case}: clean half vs a block-causal pass",
        )


def check_block_diffusion_reads(s: MixerSubject) -> None:
    """By gradient (length 9, block 3): noised block j reads exactly x_0^{<j} and x_t^j;
    clean block j reads exactly x_0^{<=j}."""
    mixer = s.mixer()
    length, block = 9, 3
    x = torch.randn(1, 2 * length, D_MODEL, dtype=torch.float64, requires_grad=True)
    positions = torch.arange(length).repeat(2)
    y, _ = mixer(x, layout=Layout.block_diffusion(block), positions=positions)
    for j in range(length // block):
        lo, hi = j * block, (j + 1) * block
        (grad,) = torch.autograd.grad(y[:, lo:hi].sum(), x, retain_graph=True)
        reads = grad.abs().sum(-1)[0] > 0
        expected = torch.zeros(2 * length, dtype=torch.bool)
        expected[lo:hi] = True
        expected[length : length + lo] = True
        assert torch.equal(reads, expected), (
            f"noised block {j} reads {reads.nonzero().flatten().tolist()}, expected "
            f"{expected.nonzero().flatten().tolist()}"
        )
        (grad,) = torch.autograd.grad(y[:, length + lo : length + hi].sum(), x, retain_graph=True)
        reads = grad.abs().sum(-1)[0] > 0
        expected = torch.zeros(2 * length, dtype=torch.bool)
        expected[length : length + hi] = True
        assert torch.equal(reads, expected), (
            f"clean block {j} reads {reads.nonzero().flatten().tolist()}, expected "
            f"{expected.nonzero().flatten().tolist()}"
        )


def check_block_causal_continuation(s: MixerSubject) -> None:
    """block_causal(4) over 14 tokens equals chunks (0-4, 4-12, 12-14) carried by state."""
    mixer = s.mixer()
    layout = Layout.block_causal(4)
    x = torch.randn(2, 14, D_MODEL, dtype=torch.float64)
    full, _ = mixer(x, layout=layout)
    state = mixer.init_state(2, dtype=torch.float64)
    parts = []
    for lo, hi in [(0, 4), (4, 12), (12, 14)]:
        y, state = mixer(x[:, lo:hi], state, layout=layout)
        parts.append(y)
    assert_close(torch.cat(parts, 1), full, "block-causal chunks vs the full pass")


def state_tensors(state: Any) -> list[Tensor]:
    tensors: list[Tensor] = []
    map_state(lambda t: tensors.append(t) or t, state)
    return tensors


def state_numbers(state: Any, batch: int) -> float:
    """Floating-point numbers per sequence in a state (integer positions and offsets are
    bookkeeping, not state)."""
    return sum(t.numel() for t in state_tensors(state) if t.is_floating_point()) / batch


def check_state_size(s: MixerSubject) -> None:
    """state_size(64) > 0; a fixed state has the same size at 64 and 4096 tokens, a KV
    cache grows; and state_size(T) equals the floating-point numbers per sequence in the
    state actually returned after T tokens (T = 0, 7 prefilled, 8 and 13 decoded)."""
    mixer = s.mixer()
    assert mixer.state_size(64) > 0, f"state_size(64) = {mixer.state_size(64)}, expected > 0"
    if s.state_kind == "fixed":
        assert mixer.state_size(64) == mixer.state_size(4096), (
            f"a fixed state has state_size(64) = {mixer.state_size(64)} but "
            f"state_size(4096) = {mixer.state_size(4096)}"
        )
    elif s.state_kind == "kv_cache":
        assert mixer.state_size(4096) > mixer.state_size(64), (
            f"a kv_cache state has state_size(4096) = {mixer.state_size(4096)}, not more than "
            f"state_size(64) = {mixer.state_size(64)}"
        )
    else:
        raise AssertionError(f"state_kind is {s.state_kind!r}, expected 'fixed' or 'kv_cache'")
    batch, P = 3, s.prefix
    x = torch.randn(batch, 13 + P, D_MODEL, dtype=torch.float64)
    state = mixer.init_state(batch, dtype=torch.float64)
    seen = [(0, state_numbers(state, batch))]
    with torch.no_grad():
        _, state = mixer(x[:, : 7 + P], state)
        seen.append((7 + P, state_numbers(state, batch)))
        for t in range(7 + P, 13 + P):
            _, state = mixer(x[:, t : t + 1], state)
            if t + 1 in (8 + P, 13 + P):
                seen.append((t + 1, state_numbers(state, batch)))
    wrong = [(t, n, mixer.state_size(t)) for t, n in seen if n != mixer.state_size(t)]
    assert not wrong, "numbers per sequence in the returned state vs state_size(T): " + "; ".join(
        f"T={t}: {n:g} held, state_size({t}) = {r}" for t, n, r in wrong
    )


def check_fixed_state_storage(s: MixerSubject) -> None:
    """The memory a fixed-size state keeps alive does not grow with the prefill length
    (8 vs 200 tokens, float32): the state holds no view of the prefill."""
    mixer = s.mixer(torch.float32)
    held = []
    for length in (8 + s.prefix, 200 + s.prefix):
        x = torch.randn(1, length, D_MODEL)
        with torch.no_grad():
            _, state = mixer(x, mixer.init_state(1))
        storages = {
            t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
            for t in state_tensors(state)
        }
        held.append(sum(storages.values()))
    assert held[0] == held[1], f"state storage {held[0]} bytes after 8 tokens, {held[1]} after 200"


def check_save_load(s: MixerSubject) -> None:
    """A 2-layer model built with the mixer survives `seqlab.save` / `seqlab.load`: the same
    tensors, and identical outputs (full pass and a state-carried continuation)."""

    model = build_model(s.config(vocab_size=17)).eval()
    if s.declares(LayoutKind.CAUSAL):
        layout = Layout.CAUSAL
    elif s.declares(LayoutKind.BIDIRECTIONAL):
        layout = Layout.BIDIRECTIONAL
    else:
        layout = Layout.block_causal(4)
    P = s.prefix
    tokens = torch.randint(0, 17, (2, 13 + P))
    with tempfile.TemporaryDirectory(prefix="seqlab-check-") as directory:
        save(model, directory)
        loaded = load(directory).eval()
    saved, restored = model.state_dict(), loaded.state_dict()
    assert saved.keys() == restored.keys(), (
        f"tensors differ: saved {sorted(saved)}, loaded {sorted(restored)}"
    )
    changed = [k for k in saved if not torch.equal(saved[k], restored[k])]
    assert not changed, f"tensors changed by the round trip: {changed}"
    with torch.no_grad():
        expected, actual = model(tokens, layout=layout)[0], loaded(tokens, layout=layout)[0]
        assert torch.equal(expected, actual), "the loaded model's outputs differ"
        if layout.is_causal:
            _, a = model(tokens[:, : 7 + P], model.init_state(2))
            _, b = loaded(tokens[:, : 7 + P], loaded.init_state(2))
            assert torch.equal(model(tokens[:, 7 + P :], a)[0], loaded(tokens[:, 7 + P :], b)[0]), (
                "the loaded model's continuation from a state differs"
            )


def periodic_batch(
    generator: torch.Generator, batch: int, length: int, vocab: int, period: int, prefix: int = 0
) -> tuple[Tensor, Tensor]:
    """Sequences repeating a random motif of `period` tokens: after the first period the
    next token is the one `period` steps back, so only a mixer (not the MLP) can predict it.
    Targets inside a non-causal `prefix` are not scored."""
    motif = torch.randint(0, vocab, (batch, period), generator=generator)
    tokens = motif.repeat(1, length // period + 1)[:, :length]
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, max(period, prefix) :] = True
    return tokens, mask


LEARNING_RATES = (1e-2, 3e-3)


def check_learns(s: MixerSubject) -> None:
    """A 2-layer model (d_model 32, vocab 16) trained 300 AdamW steps on period-3 sequences
    (16 x 24) ends below a fraction of its starting loss, at the better of two learning rates
    (as a comparison picks each cell's rate from a list). A causal mixer trains with the AR
    loss and must end below 1/4 of its start: measured over seeds 0-5, every registered causal
    mixer ends at 0.05 of its start or below at its better rate, five times inside the bound
    (at one rate and 150 steps gla, lstm and gru sat near it). A mixer without the causal
    layout trains with the masked-diffusion bound in its bidirectional layout and must end
    below 1/2 of its start: measured over seeds 0-1 in that layout, hydra, mamba2, attention
    and gla end at 0.05-0.12 of their start at the better rate (0.23 at worst at one rate)."""
    causal = s.declares(LayoutKind.CAUSAL)
    objective, bound = ("ar", 0.25) if causal else ("masked_diffusion", 0.5)
    results = []
    for lr in LEARNING_RATES:
        start, end = _train_periodic_copy(s, lr, objective)
        results.append(f"lr {lr:g}: {start:.3f} -> {end:.3f}")
        if end < bound * start:
            return
    raise AssertionError(
        f"{objective} loss never fell below {bound:g} of its start ({'; '.join(results)})"
    )


def _train_periodic_copy(
    s: MixerSubject, lr: float, objective_name: str, steps: int = 300
) -> tuple[float, float]:
    """(mean of the first 5 losses, mean of the last 10) of one seeded training run."""
    objective = build_objective(objective_name).bind(16)
    model = build_model(s.config(vocab_size=objective.model_vocab_size(16)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        tokens, mask = periodic_batch(generator, 16, 24 + s.prefix, 16, 3, s.prefix)
        loss, _ = objective.training_loss(model, Batch(tokens, mask))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return sum(losses[:5]) / 5, sum(losses[-10:]) / 10


def _needs(*kinds: LayoutKind):
    def skip(s: MixerSubject) -> str | None:
        missing = [k for k in kinds if not s.declares(k)]
        if missing:
            return f"does not declare the {' and '.join(missing)} layout"
        return None

    return skip


def _causal_fixed(s: MixerSubject) -> str | None:
    if not s.declares(LayoutKind.CAUSAL):
        return "does not declare the causal layout"
    if s.state_kind != "fixed":
        return f"state_kind is {s.state_kind!r}, not 'fixed'"
    return None


def _buildable(*kinds: LayoutKind):
    def skip(s: MixerSubject) -> str | None:
        return _needs(*kinds)(s) or s.unbuildable

    return skip


MIXER_INVARIANTS: tuple[Invariant[MixerSubject], ...] = (
    Invariant(
        "split_decode",
        "a split prefill and token-by-token decode equal the full pass (float64)",
        check_split_decode,
        _needs(LayoutKind.CAUSAL),
    ),
    Invariant(
        "chunk_split",
        "150 tokens split inside the second 64-step chunk equal the full pass (float64)",
        check_chunk_split,
        _needs(LayoutKind.CAUSAL),
    ),
    Invariant(
        "causality",
        "no output has a nonzero gradient from a later input (exact zero)",
        check_causality,
        _needs(LayoutKind.CAUSAL),
    ),
    Invariant(
        "bidirectional",
        "under the bidirectional layout the first output reads later inputs",
        check_bidirectional,
        _needs(LayoutKind.BIDIRECTIONAL),
    ),
    Invariant(
        "block_diffusion_cached_prefix",
        "block_diffusion equals block-causal prefill + a bidirectional read per block",
        check_block_diffusion_cached_prefix,
        _needs(LayoutKind.BLOCK_DIFFUSION),
    ),
    Invariant(
        "block_diffusion_reads",
        "a noised block reads exactly its clean prefix and itself (by gradient)",
        check_block_diffusion_reads,
        _needs(LayoutKind.BLOCK_DIFFUSION),
    ),
    Invariant(
        "block_causal_continuation",
        "block_causal continues from a state at block boundaries (float64)",
        check_block_causal_continuation,
        _needs(LayoutKind.BLOCK_CAUSAL),
    ),
    Invariant(
        "state_size",
        "state_size(T) matches the declared state_kind and the state actually returned",
        check_state_size,
        _needs(LayoutKind.CAUSAL),
    ),
    Invariant(
        "fixed_state_storage",
        "a fixed-size state keeps no view of the prefill alive",
        check_fixed_state_storage,
        _causal_fixed,
    ),
    Invariant(
        "save_load",
        "a model with the mixer round-trips seqlab.save / seqlab.load with identical outputs",
        check_save_load,
        _buildable(),
    ),
    Invariant(
        "learns",
        "a 2-layer model learns a period-3 copy task (AR loss below 1/4 of its start; the "
        "masked-diffusion bound below 1/2 for a mixer without the causal layout)",
        check_learns,
        _buildable(),
    ),
)
MIXER_INVARIANT_NAMES: tuple[str, ...] = tuple(inv.name for inv in MIXER_INVARIANTS)


def check_mixer(
    name_or_class: str | type[Mixer],
    *,
    only: Iterable[str] | None = None,
    raise_on_failure: bool = True,
    **options: Any,
) -> Report:
    """Run every invariant that applies to what the mixer declares; return the Report.

    `name_or_class`: a registered name, an import path `package.module:Name`, or a Mixer
    subclass (registered or not: a plugin needs no registration). `options`: the mixer's
    own options (as in `ModelConfig.mixer_options`). `only`: run just these invariants (the
    others are listed as skipped). Every selected invariant runs even after one fails; with
    `raise_on_failure` (the default) a failure raises `ConformanceError` naming each failed
    invariant, its `report` attribute holding the Report. An unknown name, a bad import path
    or an unknown option raises as a user error before any invariant runs.
    """
    subject = mixer_subject(name_or_class, options)
    return run_invariants(
        "mixer",
        repr(subject.name),
        subject,
        MIXER_INVARIANTS,
        only=only,
        raise_on_failure=raise_on_failure,
    )

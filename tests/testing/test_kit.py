"""The conformance kit itself: a correct plugin passes, each deliberately broken component
fails exactly the invariants it breaks, and the report always lists every invariant."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from seqlab.errors import ConfigError, ConformanceError, UnknownNameError
from seqlab.layout import ALL_LAYOUTS, Layout
from seqlab.mixers.base import Mixer, scan_in_layout
from seqlab.objectives.ar import Autoregressive
from seqlab.objectives.base import Batch
from seqlab.objectives.diffusion import MaskedDiffusion
from seqlab.registry import OBJECTIVES, SAMPLERS
from seqlab.sampling.ar import greedy
from seqlab.testing import (
    MIXER_INVARIANT_NAMES,
    OBJECTIVE_INVARIANT_NAMES,
    SAMPLER_INVARIANT_NAMES,
    Report,
    check_mixer,
    check_objective,
    check_sampler,
)

HERE = __name__


class ConvDecay(Mixer):
    """A plugin mixer (no registration): a width-4 depthwise causal convolution plus a
    per-channel decaying sum, run in every layout by `scan_in_layout`."""

    layouts = ALL_LAYOUTS
    state_kind = "fixed"

    def __init__(self, d_model: int, width: int = 4) -> None:
        super().__init__()
        self.d_model, self.width = d_model, width
        self.inp = nn.Linear(d_model, d_model, bias=False)
        self.taps = nn.Parameter(torch.randn(width, d_model) / width)
        self.decay_logit = nn.Parameter(torch.linspace(-2.0, 2.0, d_model))
        self.out = nn.Linear(d_model, d_model, bias=False)

    def zero_state(self, batch: int, device=None, dtype=None) -> tuple[Tensor, Tensor]:
        history = torch.zeros(batch, self.width - 1, self.d_model, device=device, dtype=dtype)
        return history, torch.zeros(batch, self.d_model, device=device, dtype=dtype)

    def keep(self, history: Tensor) -> Tensor:
        return history.clone()

    def recur(self, inputs, state):
        (u,) = inputs
        steps = u.shape[1]
        history, h = self.zero_state(u.shape[0], u.device, u.dtype) if state is None else state
        padded = torch.cat([history, u], dim=1)
        y = sum(padded[:, k : k + steps] * self.taps[k] for k in range(self.width))
        decay = torch.sigmoid(self.decay_logit)
        sums = []
        for t in range(steps):
            h = decay * h + u[:, t]
            sums.append(h)
        y = y + torch.stack(sums, dim=1)
        return y, None if state is None else (self.keep(padded[:, steps:]), h)

    def forward(self, x, state=None, *, layout=Layout.CAUSAL, positions=None):
        u = self.inp(x)
        y, new_state = scan_in_layout(
            self.recur, (u,), state, layout, lambda b: self.zero_state(b, u.device, u.dtype)
        )
        return self.out(y), new_state

    def init_state(self, batch_size, *, device=None, dtype=None):
        return self.zero_state(batch_size, device, dtype or self.out.weight.dtype)

    def state_size(self, seq_len: int) -> int:
        return self.width * self.d_model


class LeaksTheFuture(ConvDecay):
    """Its parallel causal form adds a little of the next input."""

    def forward(self, x, state=None, *, layout=Layout.CAUSAL, positions=None):
        y, new_state = super().forward(x, state, layout=layout, positions=positions)
        if state is None and layout.is_causal:
            y = y + 0.1 * torch.cat([x[:, 1:], torch.zeros_like(x[:, :1])], dim=1)
        return y, new_state


class LiesAboutItsState(ConvDecay):
    def state_size(self, seq_len: int) -> int:
        return super().state_size(seq_len) + 1


class DecodesDifferently(ConvDecay):
    """One-token causal steps from a state are off by a relative 1e-6."""

    def forward(self, x, state=None, *, layout=Layout.CAUSAL, positions=None):
        y, new_state = super().forward(x, state, layout=layout, positions=positions)
        if state is not None and layout.is_causal and x.shape[1] == 1:
            y = y * (1 + 1e-6)
        return y, new_state


class KeepsThePrefillAlive(ConvDecay):
    """Its state's history is a view of the whole (input-length) padded prefill."""

    def keep(self, history: Tensor) -> Tensor:
        return history


class CrashesBidirectionally(ConvDecay):
    def forward(self, x, state=None, *, layout=Layout.CAUSAL, positions=None):
        if layout.kind == "bidirectional":
            raise RuntimeError("no bidirectional kernel")
        return super().forward(x, state, layout=layout, positions=positions)


BROKEN = [
    (LeaksTheFuture, {"causality", "split_decode", "chunk_split"}),
    (LiesAboutItsState, {"state_size"}),
    (DecodesDifferently, {"split_decode"}),
    (KeepsThePrefillAlive, {"fixed_state_storage"}),
    (CrashesBidirectionally, {"bidirectional", "block_diffusion_cached_prefix"}),
]


def test_a_correct_plugin_mixer_passes_every_invariant():
    report = check_mixer(ConvDecay)
    assert report.ok and report.names == list(MIXER_INVARIANT_NAMES)
    assert report.passed == list(MIXER_INVARIANT_NAMES), str(report)
    assert report.subject == repr(f"{HERE}:ConvDecay")


def test_a_plugin_by_import_path_with_options():
    report = check_mixer(f"{HERE}:ConvDecay", width=3, only=["state_size", "save_load"])
    assert report.passed == ["state_size", "save_load"], str(report)
    assert set(report.skipped) == set(MIXER_INVARIANT_NAMES) - {"state_size", "save_load"}
    assert all(report[n].detail == "not selected" for n in report.skipped)


@pytest.mark.parametrize(("mixer", "breaks"), BROKEN, ids=[c.__name__ for c, _ in BROKEN])
def test_a_broken_mixer_fails_exactly_the_invariants_it_breaks(mixer, breaks):
    report = check_mixer(mixer, raise_on_failure=False)
    assert report.names == list(MIXER_INVARIANT_NAMES)
    assert set(report.failed) == breaks, str(report)
    assert set(report.passed) == set(MIXER_INVARIANT_NAMES) - breaks, str(report)
    assert not report.ok
    for name in breaks:
        assert report[name].detail and f"FAIL  {name}" in str(report)


def test_failure_messages_say_what_broke():
    report = check_mixer(
        CrashesBidirectionally, only=["bidirectional", "causality"], raise_on_failure=False
    )
    assert "RuntimeError: no bidirectional kernel" in report["bidirectional"].detail
    report = check_mixer(LeaksTheFuture, only=["causality"], raise_on_failure=False)
    assert "output 0 reads the future" in report["causality"].detail
    report = check_mixer(LiesAboutItsState, only=["state_size"], raise_on_failure=False)
    assert "T=7: 128 held, state_size(7) = 129;" in report["state_size"].detail


def test_raise_on_failure_names_each_failed_invariant():
    with pytest.raises(ConformanceError) as caught:
        check_mixer(LeaksTheFuture, only=["causality", "split_decode", "bidirectional"])
    message = str(caught.value)
    assert "fails 2 invariant(s)" in message
    assert "causality (" in message and "split_decode (" in message
    assert "bidirectional (" not in message
    assert isinstance(caught.value.report, Report)
    assert caught.value.report.failed == ["split_decode", "causality"]


def test_a_class_that_cannot_be_imported_skips_the_model_checks_with_the_reason():
    class Local(ConvDecay):
        pass

    report = check_mixer(Local, only=["causality", "save_load", "learns"])
    assert report.passed == ["causality"]
    for name in ("save_load", "learns"):
        assert "import path" in report[name].detail, report[name].detail


def test_the_report_lists_every_invariant_with_its_status():
    report = check_mixer(
        LiesAboutItsState, only=["state_size", "causality"], raise_on_failure=False
    )
    text = str(report)
    assert text.splitlines()[0].endswith("1 passed, 1 failed, 9 skipped")
    for name in MIXER_INVARIANT_NAMES:
        assert name in text
    assert "FAIL  state_size" in text and "PASS  causality" in text
    assert "skipped: not selected" in text


def test_declarations_decide_what_runs():
    class CausalOnly(ConvDecay):
        layouts = frozenset({"causal"})

    report = check_mixer(CausalOnly, only=["bidirectional", "block_diffusion_reads", "causality"])
    assert report["bidirectional"].detail == "does not declare the bidirectional layout"
    assert report["block_diffusion_reads"].skipped and report["causality"].passed


def test_user_errors_raise_before_any_invariant_runs():
    with pytest.raises(UnknownNameError, match="valid mixers"):
        check_mixer("no_such_mixer")
    with pytest.raises(ConfigError, match="does not import"):
        check_mixer("no_such_package.module:Mixer")
    with pytest.raises(ConfigError, match="has no"):
        check_mixer(f"{HERE}:Nothing")
    with pytest.raises(ConfigError, match="not a seqlab.mixers.base.Mixer subclass"):
        check_mixer(f"{HERE}:BROKEN")
    with pytest.raises(ConfigError, match="unknown option"):
        check_mixer("gla", bogus=1)
    with pytest.raises(ConfigError, match="unknown invariant"):
        check_mixer("gla", only=["no_such_invariant"])


def test_the_callers_random_state_is_left_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_mixer("gru", only=["causality", "state_size"])
    assert torch.equal(torch.rand(3), expected)


def test_registered_mixer_options_are_passed_through():
    report = check_mixer("gla", expand_k=1.0, only=["state_size", "split_decode"])
    assert report.passed == ["split_decode", "state_size"]


# --- objectives ----------------------------------------------------------------------------


class MisscaledLoss(Autoregressive):
    """Its training loss is 10% off its own NLL."""

    def loss(self, model, batch: Batch):
        loss, metrics = super().loss(model, batch)
        return 1.1 * loss, {}


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_every_registered_objective_passes(name):
    report = check_objective(name)
    assert report.names == list(OBJECTIVE_INVARIANT_NAMES) and report.ok


@pytest.mark.parametrize("options", [{"shift": True}, {"noise": "uniform"}, {"block_size": 3}])
def test_block_diffusion_options(options):
    report = check_objective("block_diffusion", **options)
    applies = options.get("noise", "absorbing") == "absorbing"
    assert report["block_size_one_is_ar"].status == ("pass" if applies else "skip")


@pytest.mark.parametrize(
    ("name", "options"),
    [
        # width 1 with the time estimator may leave 3 rows' one active token unmasked (no
        # gradient); the count estimator always masks it
        (
            "masked_diffusion",
            {"hyperschedule": {"kind": "staircase", "width": 1}, "estimator": "count"},
        ),
        ("masked_diffusion", {"hyperschedule": {"kind": "staircase", "width": 2}}),
        ("masked_diffusion", {"hyperschedule": {"kind": "sliding", "width": 3}}),
        ("uniform_diffusion", {"hyperschedule": {"kind": "staircase", "width": 4}}),
        ("gamma_hybrid_diffusion", {"gamma": 0.0}),
        ("gamma_hybrid_diffusion", {"gamma": 1.0, "hyperschedule": {"kind": "sliding"}}),
        ("epsilon_hybrid_diffusion", {"epsilon": 0.0}),
    ],
)
def test_hyperschedule_and_hybrid_settings(name, options):
    assert check_objective(name, **options).ok


def test_an_objective_whose_loss_is_not_its_nll_fails_that_invariant_only():
    report = check_objective(MisscaledLoss, raise_on_failure=False)
    assert report.failed == ["nll_matches_loss"], str(report)
    assert report.passed == [
        "loss_and_gradient",
        "nll_reported",
        "nll_deterministic",
        "source_kept",
        "generate_blind",
    ]
    assert report.skipped == ["block_size_one_is_ar"]


class NoisesItsSource(MaskedDiffusion):
    """Masks unscored positions too (it scores only the scored ones)."""

    def bind(self, vocab_size: int):
        super().bind(vocab_size)
        corrupt = self.process.corrupt
        self.process.corrupt = lambda tokens, t, scored: corrupt(tokens, t, scored | True)
        return self


class ScoresItsSource(Autoregressive):
    """Reads the right inputs but scores every next token, the source's too."""

    def loss(self, model, batch: Batch):
        return super().loss(model, Batch(batch.tokens))


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("block_diffusion", {"block_sizes": [2, 3]}),
        ("block_diffusion", {"shift": True, "clip": [0.3, 0.8], "block_size": 3}),
        ("masked_diffusion", {"estimator": "count"}),
        ("any_order", {"order": "identity"}),
        ("mtp", {"heads": 3}),
    ],
)
def test_the_source_is_kept_under_other_settings(name, options):
    assert check_objective(name, only=["source_kept"], **options).ok


def test_an_objective_that_noises_or_scores_its_source_fails_source_kept():
    report = check_objective(NoisesItsSource, raise_on_failure=False)
    assert report.failed == ["source_kept"], str(report)
    assert "does not hold the unscored source" in report["source_kept"].detail
    report = check_objective(ScoresItsSource, raise_on_failure=False)
    assert report.failed == ["nll_matches_loss", "source_kept"], str(report)
    assert "scores source tokens" in report["source_kept"].detail


def test_objective_user_errors():
    with pytest.raises(UnknownNameError):
        check_objective("no_such_objective")
    with pytest.raises(ConfigError):
        check_objective("block_diffusion", block_size=0)


# --- samplers ------------------------------------------------------------------------------


def drops_the_prompt(model, prompt, max_new_tokens, *, pad_id: int = 0):
    """Greedy, but the prompt positions come back as zeros."""
    out = greedy(model, prompt, max_new_tokens)
    for i, row in enumerate(prompt if isinstance(prompt, list) else prompt.unbind(0)):
        out.tokens[i, : row.numel()] = 0
    return out


def ignores_its_seed(model, prompt, max_new_tokens, *, seed: int | None = None):
    """Samples from torch's global RNG whatever the seed."""
    from seqlab.sampling.ar import sample

    return sample(model, prompt, max_new_tokens, seed=int(torch.randint(0, 1000, ())))


def forgets_the_prompt_while_denoising(model, prompt, max_new_tokens, *, seed: int | None = None):
    """Ancestral sampling after one forward that reads the prompt masked out."""
    from seqlab.sampling import generate

    mask_id = model.config.vocab_size - 1
    model(torch.full((prompt.shape[0], prompt.shape[1] + max_new_tokens), mask_id))
    return generate(model, prompt, max_new_tokens=max_new_tokens, sampler="ancestral", seed=seed)


forgets_the_prompt_while_denoising.paradigm = "diffusion"


# samplers that need more than the default objective (arpc: a BlockGen model, trained with
# block size 1 among its block sizes)
KIT_OBJECTIVES = {"arpc": {"name": "block_diffusion", "block_size": 4, "block_sizes": [1, 4]}}


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_every_registered_sampler_passes(name):
    spec = dict(KIT_OBJECTIVES.get(name, {}))
    options = {"objective": OBJECTIVES.build(spec.pop("name"), **spec)} if spec else {}
    report = check_sampler(name, **options)
    assert report.names == list(SAMPLER_INVARIANT_NAMES) and report.ok


@pytest.mark.parametrize(
    ("sampler", "breaks"),
    [
        (drops_the_prompt, "prompt_kept"),
        (ignores_its_seed, "reproducible"),
        (forgets_the_prompt_while_denoising, "prompt_fixed"),
    ],
)
def test_a_broken_sampler_fails_exactly_what_it_breaks(sampler, breaks):
    report = check_sampler(sampler, raise_on_failure=False)
    assert report.failed == [breaks], str(report)
    assert len(report.passed) + len(report.skipped) == len(SAMPLER_INVARIANT_NAMES) - 1


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("ancestral", {"objective": "block_diffusion", "block_size": 4}),
        ("remask", {"objective": "block_diffusion", "block_size": 4, "eta": 1.0}),
        ("confidence", {"objective": "block_diffusion", "block_size": 3}),
        ("ancestral", {"objective": "uniform_diffusion", "block_size": 2}),
    ],
)
def test_a_prompt_that_ends_inside_a_block_stays_fixed(name, options):
    # the 5-token prompt shares a block with new tokens, which the rules may change
    assert check_sampler(name, only=["prompt_kept", "prompt_fixed"], **options).ok


def test_sampler_options_and_user_errors():
    assert check_sampler("sample", temperature=0.5, top_k=3).ok
    assert check_sampler("ancestral", steps=3, block_size=2).ok
    with pytest.raises(UnknownNameError):
        check_sampler("no_such_sampler")
    with pytest.raises(ConfigError, match="unknown option"):
        check_sampler("greedy", temperature=0.5)

import pytest
import torch

import seqlab
from seqlab.errors import ConfigError, SeqlabError
from seqlab.layout import Layout
from seqlab.mixers.gam import GAM, gam_reference
from seqlab.testing import check_mixer


def reference_of(mixer: GAM, x: torch.Tensor, conv_state: torch.Tensor | None = None):
    return gam_reference(
        x,
        mixer.conv.weight,
        mixer.conv.bias,
        mixer.memory,
        mixer.gate.weight,
        mixer.gate.bias,
        conv_state,
    )


@pytest.mark.parametrize(("d_model", "slots", "conv_size"), [(5, 7, 4), (3, 1, 2), (6, 13, 3)])
def test_parallel_form_matches_token_by_token_reference_float64(d_model, slots, conv_size):
    torch.manual_seed(0)
    mixer = GAM(d_model, memory_slots=slots, conv_size=conv_size).double()
    with torch.no_grad():  # nonzero gate and conv biases, so every term is exercised
        mixer.gate.bias.normal_()
        mixer.conv.bias.normal_()
    x = torch.randn(3, 11, d_model, dtype=torch.float64, requires_grad=True)
    y, _ = mixer(x)
    expected, _ = reference_of(mixer, x)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)

    weight = torch.randn_like(y)
    params = [x, *mixer.parameters()]
    grads = torch.autograd.grad((y * weight).sum(), params)
    expected_grads = torch.autograd.grad((expected * weight).sum(), params)
    names = ["x", *(name for name, _ in mixer.named_parameters())]
    for name, got, want in zip(names, grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=f"grad of {name}")


def test_reference_matches_from_a_carried_state_float64():
    torch.manual_seed(1)
    mixer = GAM(5, memory_slots=9, conv_size=4).double()
    x = torch.randn(2, 13, 5, dtype=torch.float64)
    with torch.no_grad():
        _, state = mixer(x[:, :6], mixer.init_state(2, dtype=torch.float64))
        y, new_state = mixer(x[:, 6:], state)
        expected, window = reference_of(mixer, x[:, 6:], state.conv)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(new_state.conv, window, rtol=0, atol=0)
    torch.testing.assert_close(window, x[:, -3:], rtol=0, atol=0)


def test_gam_passes_the_kit_with_a_wider_conv_and_few_slots():
    report = check_mixer("gam", memory_slots=3, conv_size=5, only=["split_decode", "state_size"])
    assert report.passed, str(report)


@pytest.mark.parametrize(
    "options",
    [
        {"memory_slots": 0},
        {"memory_slots": 2.5},
        {"conv_size": 1},
        {"conv_size": 0},
        {"conv_size": True},
        {"slots": 8},
    ],
)
def test_bad_options_are_config_errors(options):
    config = seqlab.ModelConfig(d_model=16, n_heads=2, vocab_size=8, mixer="gam")
    config.mixer_options = {"gam": options}
    with pytest.raises(ConfigError):
        seqlab.build_model(config)


def test_other_layouts_are_refused():
    mixer = GAM(4)
    with pytest.raises(SeqlabError):
        mixer(torch.randn(1, 5, 4), layout=Layout.BIDIRECTIONAL)


def test_state_is_the_conv_window_only():
    mixer = GAM(6, memory_slots=32, conv_size=4)
    assert mixer.state_size(1) == mixer.state_size(10**6) == 3 * 6
    assert mixer.init_state(2).conv.shape == (2, 3, 6)


@pytest.mark.parametrize("conv_size", [2, 3, 5])
def test_negative_control_reads_nothing_beyond_the_conv_window(conv_size):
    """Recall is impossible: y_t has exactly zero gradient from x_s for s < t − (k − 1), and
    a nonzero one from each x_s in the window; the memory is the same for every sequence."""
    torch.manual_seed(2)
    steps = 12
    mixer = GAM(8, memory_slots=16, conv_size=conv_size).double()
    x = torch.randn(2, steps, 8, dtype=torch.float64, requires_grad=True)
    y, _ = mixer(x)
    for t in range(steps):
        (grad,) = torch.autograd.grad(y[:, t].sum(), x, retain_graph=True)
        per_position = grad.abs().sum(dim=(0, 2))
        first = max(0, t - (conv_size - 1))
        assert torch.all(per_position[:first] == 0), f"t={t} reads before its conv window"
        assert torch.all(per_position[first : t + 1] > 0), f"t={t} misses part of its window"
        assert torch.all(per_position[t + 1 :] == 0), f"t={t} reads the future"


def test_negative_control_through_layers():
    """Through L layers the receptive field is exactly L·(k − 1) tokens back."""
    torch.manual_seed(3)
    conv_size, layers, steps = 3, 2, 14
    config = seqlab.ModelConfig(d_model=16, n_heads=2, vocab_size=11, n_layers=layers)
    config.mixer = "gam"
    config.mixer_options = {"gam": {"conv_size": conv_size, "memory_slots": 8}}
    model = seqlab.build_model(config).double()
    tokens = torch.randint(0, 11, (1, steps))
    embeddings = model.embed(tokens).detach().requires_grad_(True)
    logits, _ = model(tokens, input_embeddings=embeddings)
    reach = layers * (conv_size - 1)
    t = steps - 1
    (grad,) = torch.autograd.grad(logits[:, t].sum(), embeddings)
    per_position = grad.abs().sum(dim=(0, 2))
    assert torch.all(per_position[: t - reach] == 0)
    assert torch.all(per_position[t - reach :] > 0)

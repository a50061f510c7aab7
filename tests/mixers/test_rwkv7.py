"""RWKV-7: chunked vs recurrent kernel modes, decode, options and the mixing matrix (the
kernel itself: tests/ops/test_generalized_delta_rule.py; the invariants: test_invariants.py)."""

from __future__ import annotations

import pytest
import torch

from seqlab.config import ModelConfig
from seqlab.errors import ConfigError
from seqlab.mixers.rwkv7 import RWKV7


def make(seed: int = 0, **options) -> RWKV7:
    torch.manual_seed(seed)
    mixer = RWKV7(16, 2, n_layers=3, layer=1, chunk_size=4, **options).double()
    with torch.no_grad():  # move the zero-init LoRA down-projections off zero
        for lora in (mixer.decay, mixer.iclr, mixer.gate):
            lora.down.weight.normal_(std=0.3)
    return mixer


def test_chunk_and_recurrent_modes_agree_float64():
    mixer = make()
    x = torch.randn(2, 13, 16, dtype=torch.float64)
    outputs = {}
    for mode in ("chunk", "recurrent"):
        mixer.kernel_mode = mode
        y, state = mixer(x, mixer.init_state(2, dtype=torch.float64))
        outputs[mode] = (y, state.recurrent, state.conv)
    for chunk, ref in zip(outputs["chunk"], outputs["recurrent"], strict=True):
        torch.testing.assert_close(chunk, ref, rtol=1e-9, atol=1e-10)


def test_decode_token_by_token_equals_the_parallel_pass():
    mixer = make(1)
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    full, _ = mixer(x)
    state = mixer.init_state(2, dtype=torch.float64)
    steps = []
    for t in range(9):
        y, state = mixer(x[:, t : t + 1], state)
        steps.append(y)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(state.conv, x[:, -1:])


def test_mixing_matrix_reproduces_the_kernel_output_float64():
    mixer = make(2)
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    mixing = mixer.mixing(x)
    assert mixing.matrix.shape == (2, 2, 7, 7)
    assert torch.equal(mixing.matrix, mixing.matrix.tril())
    applied = torch.einsum("bhts,bshv->bthv", mixing.matrix, mixing.values)
    torch.testing.assert_close(applied, mixing.output, rtol=1e-10, atol=1e-12)
    # the layer's output is W_o((GroupNorm(o) + bonus) ⊙ g): rebuild it from the kernel output
    inputs, extras = mixer._project(x)
    y, _ = mixer(x)
    torch.testing.assert_close(mixer._output(mixing.output, extras), y)


def test_decay_stays_in_the_papers_range_and_init_follows_the_layer():
    mixer = make()
    x = 10 * torch.randn(1, 5, 16, dtype=torch.float64)
    (_, _, _, log_w, *_), _ = mixer._project(x)
    assert log_w.min() >= -(torch.e**-0.5) and log_w.max() < 0
    first, last = RWKV7(16, 2, n_layers=4, layer=0), RWKV7(16, 2, n_layers=4, layer=3)
    assert first.mu.mean() > last.mu.mean()
    assert torch.all(first.decay.down.weight == 0) and torch.all(first.decay.up.weight != 0)


@pytest.mark.parametrize(
    "options",
    [{"heads": 3}, {"chunk_size": 6}, {"decay_rank": -1}, {"iclr_rank": 0}, {"gate_rank": 2.5}],
)
def test_bad_options_raise_config_error(options):
    config = ModelConfig(mixer="rwkv7", d_model=16, n_heads=2)
    with pytest.raises(ConfigError):
        RWKV7.from_config(config, **options)
    with pytest.raises(ConfigError, match="n_layers"):
        RWKV7(16, 2, n_layers=0)

import torch

from seqlab.mixers.short_conv import ShortConv


def test_step_by_step_equals_full_sequence_float64():
    conv = ShortConv(6).double()
    x = torch.randn(2, 9, 6, dtype=torch.float64)
    full, _ = conv(x)
    state = conv.init_state(2, dtype=torch.float64)
    steps = []
    for t in range(9):
        y, state = conv(x[:, t : t + 1], state)
        steps.append(y)
    torch.testing.assert_close(torch.cat(steps, 1), full)
    head, state = conv(x[:, :2], conv.init_state(2, dtype=torch.float64))
    tail, _ = conv(x[:, 2:], state)
    torch.testing.assert_close(torch.cat([head, tail], 1), full)


def test_matches_plain_sum_and_is_causal():
    conv = ShortConv(3, kernel_size=4, activation=None).double()
    x = torch.randn(1, 7, 3, dtype=torch.float64)
    y, _ = conv(x)
    padded = torch.cat([torch.zeros(1, 3, 3, dtype=torch.float64), x], 1)
    expected = torch.stack(
        [(padded[:, t : t + 4] * conv.weight.T).sum(1) + conv.bias for t in range(7)], 1
    )
    torch.testing.assert_close(y, expected)

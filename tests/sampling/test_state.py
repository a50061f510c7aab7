import torch

from seqlab.mixers.attention import KVCache
from seqlab.sampling.state import merge_rows, rewind
from seqlab.state import drop_last, stack_states
from tests.sampling.helpers import tiny


def test_stacked_kv_caches_are_left_padded_and_decode_like_each_row():
    model = tiny()
    a, b = torch.tensor([[1, 2, 3, 4]]), torch.tensor([[5, 6]])
    _, sa = model(a, model.init_state(1))
    _, sb = model(b, model.init_state(1))
    state = stack_states([sa, sb])
    cache = state[0]
    assert isinstance(cache, KVCache) and cache.k.shape[1] == 4
    assert cache.positions.tolist() == [[0, 1, 2, 3], [-1, -1, 0, 1]]
    assert cache.offset.tolist() == [4, 2]
    logits, _ = model(torch.tensor([[7], [7]]), state)
    alone_a, _ = model(torch.tensor([[7]]), sa)
    alone_b, _ = model(torch.tensor([[7]]), sb)
    torch.testing.assert_close(logits, torch.cat([alone_a, alone_b]), rtol=1e-5, atol=1e-5)


def test_merge_rows_puts_rows_back_in_place():
    model = tiny("gru")
    tokens = torch.tensor([[1, 2], [3, 4], [5, 6]])
    _, full = model(tokens, model.init_state(3))
    _, odd = model(tokens[[0, 2]], model.init_state(2))
    _, even = model(tokens[[1]], model.init_state(1))
    merged = merge_rows([(torch.tensor([0, 2]), odd), (torch.tensor([1]), even)])
    for m, f in zip(merged, full, strict=True):
        torch.testing.assert_close(m.h, f.h)


def test_drop_last_forgets_per_row_and_compacts():
    model = tiny()
    _, s0 = model(torch.tensor([[1, 2], [3, 4]]), model.init_state(2))
    fed = torch.tensor([[5, 6, 7], [8, 9, 10]])
    _, s1 = model(fed, s0)
    cache = drop_last(s1[0], torch.tensor([2, 0]))
    assert cache.positions.tolist() == [[-1, -1, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert cache.offset.tolist() == [3, 5]
    # an int forgets as many in every row, by slicing: the same cache as the per-row form
    sliced, compacted = drop_last(cache, 1), drop_last(cache, torch.tensor([1, 1]))
    assert sliced.positions.tolist() == [[-1, -1, 0, 1], [0, 1, 2, 3]]
    assert torch.equal(sliced.positions, compacted.positions)
    assert torch.equal(sliced.offset, compacted.offset)
    valid = sliced.positions >= 0  # padding entries are never read; their values may differ
    assert torch.equal(sliced.k[valid], compacted.k[valid])
    assert torch.equal(sliced.v[valid], compacted.v[valid])


def test_rewind_matches_feeding_only_the_kept_tokens():
    fed = torch.tensor([[5, 6, 7], [8, 9, 10], [11, 12, 13]])
    keep = torch.tensor([1, 3, 2])
    nxt = torch.tensor([[1], [2], [3]])
    for mixer in ("attention", "gru"):
        model = tiny(mixer)
        _, s0 = model(torch.tensor([[1, 2], [3, 4], [2, 2]]), model.init_state(3))
        _, s1 = model(fed, s0)
        state, nfe = rewind(model, s0, s1, fed, keep)
        assert nfe == (0 if mixer == "attention" else 2)
        logits, _ = model(nxt, state)
        for i in range(3):
            _, alone = model(fed[i : i + 1, : keep[i]], tuple(_row(s, i) for s in s0))
            expected, _ = model(nxt[i : i + 1], alone)
            torch.testing.assert_close(logits[i : i + 1], expected, rtol=1e-5, atol=1e-5)


def _row(state, i):
    from seqlab.state import reorder_state

    return reorder_state(state, torch.tensor([i]))

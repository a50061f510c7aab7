"""The state tree utility: one walk for map and zip, growing leaves dispatching to
themselves."""

from dataclasses import dataclass

import torch

from seqlab.state import (
    can_drop_last,
    clone_state,
    drop_last,
    interleave_states,
    map_state,
    reorder_state,
    stack_states,
    zip_states,
)
from tests.sampling.helpers import tiny


@dataclass
class Pair:
    a: torch.Tensor
    b: dict


@dataclass
class Rows:
    """A toy growing leaf: rows of different lengths, right-padded with −1."""

    x: torch.Tensor

    @classmethod
    def concat(cls, items):
        length = max(i.x.shape[1] for i in items)
        return cls(torch.cat([i.pad_to(length).x for i in items]))

    def pad_to(self, length):
        pad = self.x.new_full((self.x.shape[0], length - self.x.shape[1]), -1)
        return Rows(torch.cat([self.x, pad], dim=1))

    def drop_last(self, drop):
        return Rows(self.x[:, : self.x.shape[1] - drop])


def test_map_and_zip_walk_dataclasses_tuples_lists_dicts():
    state = (Pair(torch.arange(4.0).view(2, 2), {"h": [torch.ones(2, 3), None]}), 7)
    doubled = map_state(lambda t: 2 * t, state)
    assert doubled[1] == 7 and doubled[0].b["h"][1] is None
    assert torch.equal(doubled[0].a, 2 * state[0].a)
    summed = zip_states(lambda ts: ts[0] + ts[1], [state, doubled])
    assert torch.equal(summed[0].b["h"][0], 3 * torch.ones(2, 3))
    picked = reorder_state(state, torch.tensor([1, 1, 0]))
    assert picked[0].a.tolist() == [[2, 3], [2, 3], [0, 1]]
    copy = clone_state(state)
    assert copy[0].a is not state[0].a and torch.equal(copy[0].a, state[0].a)


def test_stack_keeps_rows_in_order_and_interleave_folds():
    a, b = torch.tensor([[0], [1]]), torch.tensor([[10], [11]])
    assert stack_states([(a,), (b,)])[0].tolist() == [[0], [1], [10], [11]]
    assert interleave_states([(a,), (b,)])[0].tolist() == [[0], [10], [1], [11]]


def test_growing_leaves_pad_concat_and_drop_themselves():
    short, long = Rows(torch.tensor([[1]])), Rows(torch.tensor([[2, 3, 4]]))
    parts = [{"cache": short, "h": torch.zeros(1, 2)}, {"cache": long, "h": torch.ones(1, 2)}]
    stacked = stack_states(parts)
    assert stacked["cache"].x.tolist() == [[1, -1, -1], [2, 3, 4]]
    assert stacked["h"].tolist() == [[0, 0], [1, 1]]
    assert not can_drop_last(stacked)  # "h" is a fixed-size tensor: it cannot forget
    assert can_drop_last((stacked["cache"], None))
    assert drop_last((stacked["cache"],), 1)[0].x.tolist() == [[1, -1], [2, 3]]


def test_attention_states_can_drop_last_and_recurrent_ones_cannot():
    for mixer, expected in (("attention", True), ("gru", False)):
        model = tiny(mixer)
        _, state = model(torch.tensor([[1, 2]]), model.init_state(1))
        assert can_drop_last(state) is expected

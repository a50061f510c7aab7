"""Most-popular and item-to-item co-occurrence: counts by hand, and a toy interaction file."""

import pytest
import torch

from seqlab.config import ExperimentConfig, ModelConfig, from_dict
from seqlab.model import build_model
from seqlab.objectives.base import Batch
from seqlab.train.loop import train
from tests.data.tasks.test_seqrec import write_pattern

ROWS = torch.tensor([[0, 1, 2, 1], [2, 1, 2, 3]])  # targets: 1 2 1 | 1 2 3


def baseline(name, vocab=5, **options):
    return build_model(ModelConfig(vocab_size=vocab, baseline=name, baseline_options=options))


def test_popularity_is_the_smoothed_target_frequency_at_every_position():
    model = baseline("popularity", smoothing=1.0)
    model.fit([Batch(ROWS)])
    counts = torch.tensor([0, 3, 2, 1, 0], dtype=torch.float64) + 1.0
    log_probs, _ = model(torch.tensor([[4, 0, 3]]))
    expected = (counts / counts.sum()).log().float()
    assert torch.allclose(log_probs[0], expected.expand(3, -1), atol=1e-6)


def test_cooccurrence_counts_the_next_item_after_the_last_one():
    model = baseline("cooccurrence", smoothing=1.0, weight=2.0)
    model.fit([Batch(ROWS)])
    popularity = torch.tensor([1, 4, 3, 2, 1], dtype=torch.float64) / 11
    after_1 = torch.tensor([0, 0, 2, 0, 0], dtype=torch.float64)  # 1 -> 2 twice
    after_2 = torch.tensor([0, 2, 0, 1, 0], dtype=torch.float64)  # 2 -> 1 twice, 2 -> 3
    log_probs, _ = model(torch.tensor([[1, 2, 4]]))
    probs = log_probs.double().exp()[0]
    assert torch.allclose(probs[0], (after_1 + 2 * popularity) / 4, atol=1e-6)
    assert torch.allclose(probs[1], (after_2 + 2 * popularity) / 5, atol=1e-6)
    assert torch.allclose(probs[2], popularity, atol=1e-6)  # 4 was never followed
    state, steps = model.init_state(1), []
    for t in range(3):
        out, state = model(torch.tensor([[1, 2, 4][t]])[None], state)
        steps.append(out)
    assert torch.allclose(torch.cat(steps, 1), log_probs)


@pytest.mark.parametrize("name", ["popularity", "cooccurrence"])
def test_on_a_toy_interaction_file(tmp_path, name):
    """Items follow `next = previous + 7 (mod 40)`: co-occurrence learns it, popularity not."""
    path = write_pattern(tmp_path / "p.inter", users=60, items=40)
    config = from_dict(
        ExperimentConfig,
        {
            "model": {"baseline": name},
            "task": {"name": "seqrec", "path": str(path), "max_len": 12, "negatives": 20},
            "train": {"steps": 4, "batch_size": 16, "threads": 1, "eval_tokens": 4096},
        },
    )
    summary = train(config, tmp_path / "run", progress=False)
    hit = summary["validation"]["full_hr10"]
    if name == "cooccurrence":
        assert hit > 0.8
    else:
        assert hit < 0.6
    assert summary["params"] > 0 and (tmp_path / "run" / "model.safetensors").is_file()

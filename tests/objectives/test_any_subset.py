import math

import pytest
import torch

import seqlab
from seqlab.config import ExperimentConfig, ModelConfig, from_dict
from seqlab.errors import ConfigError
from seqlab.layout import Layout
from seqlab.objectives import Batch, build_objective
from seqlab.objectives.any_order import sinusoid
from seqlab.sampling.any_subset import infill
from seqlab.testing import check_objective
from seqlab.train import train
from seqlab.train.logging import read_metrics
from tests.helpers import tiny_config, write_corpus

VOCAB = 5
QUERY = VOCAB


def tiny(mixer="attention", n_layers=2):
    config = ModelConfig(
        mixer=mixer, d_model=32, n_layers=n_layers, n_heads=4, vocab_size=VOCAB + 1
    )
    return seqlab.build_model(config).double()


def context_mask(b, length, context):
    mask = torch.zeros(b, length, dtype=torch.bool)
    mask[:, context:] = True
    return mask


@pytest.mark.parametrize(
    "options",
    [
        {"order": "identity", "group_size": 3},
        {"order": "identity", "groups": 2},
        {"partition": "random", "group_size": 3},
        {"curriculum_steps": 10},
    ],
)
def test_conformance_kit_with_options(options):
    report = check_objective("any_subset", **options)
    assert report.ok, str(report)
    exact = options.get("order") == "identity"
    assert report["nll_matches_loss"].status == ("pass" if exact else "skip")


def test_grouping_puts_the_context_first_and_groups_the_scored_tokens_along_the_order():
    objective = build_objective("any_subset", VOCAB, group_size=3)
    tokens = torch.randint(0, VOCAB, (64, 11))
    mask = context_mask(64, 11, 4)
    groups, size = objective.grouping(Batch(tokens, mask))
    assert size == 3
    assert torch.equal(groups[:, :4], torch.tensor([0, 0, 0, 1]).expand(64, -1))
    counts = torch.stack([(groups == g).sum(1) for g in (2, 3)], dim=1)
    assert torch.equal(counts, torch.tensor([3, 3]).expand(64, -1))
    assert torch.equal((groups == 4).sum(1), torch.ones(64, dtype=torch.long))
    assert len({tuple(row.tolist()) for row in groups}) > 10  # random orders per row
    identity = build_objective("any_subset", VOCAB, order="identity", groups=2)
    groups, size = identity.grouping(Batch(tokens[:, :10], mask[:, :10]))
    assert size == 3 and torch.equal(groups[0], torch.tensor([0, 0, 0, 1, 2, 2, 2, 3, 3, 3]))
    random = build_objective("any_subset", VOCAB, group_size=3, partition="random")
    groups, _ = random.grouping(Batch(tokens, mask))
    sizes = torch.stack([(groups == g).sum(1) for g in range(int(groups.max()) + 1)], 1)
    assert sizes.max() <= 3 and (sizes[:, 2:] == 1).any() and (sizes[:, 2:] == 2).any()


def test_groups_of_one_left_to_right_are_the_chain_rule_of_a_causal_pass_with_a_query():
    """Group size 1 in left-to-right order: x_i is predicted by a causal pass over
    [x_<i, QUERY] at positions 1..i+1 (the query carries the target's position), token by
    token; with position_scale 0 this is block_diffusion's block-size-1 chain rule."""
    model = tiny()
    objective = build_objective("any_subset", VOCAB, order="identity", group_size=1)
    tokens = torch.randint(0, VOCAB, (3, 7))
    scores = objective.scores(model, Batch(tokens))
    expected = torch.empty_like(scores.nll)
    with torch.no_grad():
        for i in range(7):
            inputs = torch.cat([tokens[:, :i], torch.full((3, 1), QUERY)], dim=1)
            positions = torch.arange(1, i + 2)
            logits, _ = model(
                inputs,
                layout=Layout.CAUSAL,
                positions=positions,
                input_embeddings=0.1 * sinusoid(positions, 32).expand(3, -1, -1),
            )
            logp = logits[:, -1, :VOCAB].log_softmax(-1)
            expected[:, i] = -logp.gather(1, tokens[:, i : i + 1]).squeeze(1)
    torch.testing.assert_close(scores.nll, expected, rtol=1e-10, atol=1e-10)
    result = objective.nll(model, Batch(tokens))
    assert math.isclose(result.nats, float(expected.sum()), rel_tol=1e-10)
    assert result.tokens == 21 and not result.bound

    plain = build_objective("any_subset", VOCAB, order="identity", group_size=1, position_scale=0)
    block = build_objective("block_diffusion", VOCAB, block_size=1)
    ones = torch.ones(tokens.shape, dtype=torch.float64)
    with torch.no_grad():
        chain = block.elbo_terms(model, Batch(tokens), ones)[0]
    nll = plain.scores(model, Batch(tokens)).nll
    torch.testing.assert_close(nll, chain, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mixer", ["attention", "gla"])
def test_a_prediction_reads_earlier_groups_only(mixer):
    """Changing a token in the same group or a later one leaves a prediction unchanged;
    changing one in an earlier group (context included) changes it."""
    torch.manual_seed(0)
    model = tiny(mixer)
    objective = build_objective("any_subset", VOCAB, group_size=3, position_scale=0.5)
    tokens = torch.randint(0, VOCAB, (1, 11))
    mask = context_mask(1, 11, 2)
    groups, size = objective.grouping(Batch(tokens, mask))
    with torch.no_grad():
        base = objective.grouped_logits(model, tokens, groups, size)[0]
        for j in range(11):
            changed = tokens.clone()
            changed[0, j] = (tokens[0, j] + 1) % VOCAB
            logits = objective.grouped_logits(model, changed, groups, size)[0]
            for i in range(11):
                moved = (logits[i] - base[i]).abs().max()
                if groups[0, j] < groups[0, i]:
                    assert moved > 1e-6, (i, j, groups.tolist())
                else:
                    assert moved < 1e-12, (i, j, groups.tolist(), float(moved))


def test_absent_positions_are_read_by_nobody():
    model = tiny()
    objective = build_objective("any_subset", VOCAB, group_size=2)
    tokens = torch.randint(0, VOCAB, (2, 8))
    groups = torch.tensor([[0, 0, -1, 1, 2, -1, 2, 1], [-1, 0, 0, 1, -1, -1, 1, 2]])
    with torch.no_grad():
        base = objective.grouped_logits(model, tokens, groups, 2)
        changed = tokens.masked_fill(groups < 0, 0) + (groups < 0) * 3
        logits = objective.grouped_logits(model, changed, groups, 2)
    present = groups >= 0
    torch.testing.assert_close(logits[present], base[present], rtol=0, atol=1e-12)


def test_curriculum_anneals_from_left_to_right_singletons_to_random_groups():
    objective = build_objective("any_subset", VOCAB, group_size=4, curriculum_steps=100)
    assert objective.curriculum(0) == (0.0, 0.0)
    assert objective.curriculum(25) == (0.5, 0.0)
    assert objective.curriculum(50) == (1.0, 0.0)
    assert objective.curriculum(75) == (1.0, 0.5)
    assert objective.curriculum(100) == objective.curriculum(500) == (1.0, 1.0)
    assert objective.curriculum() == (1.0, 1.0)  # outside training: the configured grouping
    identity = build_objective("any_subset", VOCAB, order="identity", curriculum_steps=10)
    assert identity.curriculum(10) == (1.0, 0.0)

    tokens = torch.randint(0, VOCAB, (16, 9))
    mask = context_mask(16, 9, 2)
    objective.set_step(0)
    groups, size = objective.grouping(Batch(tokens, mask), *objective.curriculum())
    assert size == 1 and torch.equal(groups, torch.arange(9).expand(16, -1))
    objective.set_step(40)  # grown 0.8 of the way: groups of 1 + round(0.8 · 3) = 3
    groups, size = objective.grouping(Batch(tokens, mask), *objective.curriculum())
    expected = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 3])
    assert size == 3 and torch.equal(groups, expected.expand(16, -1))
    model = tiny(n_layers=1)
    objective.set_step(0)
    _, metrics = objective.training_loss(model, Batch(tokens, mask))
    assert metrics["group_size"] == 1 and metrics["shuffled"] == 0


def test_the_trainer_passes_its_step_to_the_curriculum(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", files=4, lines=20)
    sections = {
        "objective": {"name": "any_subset", "group_size": 4, "curriculum_steps": 4},
        "train": {"steps": 5, "eval_every": 100, "checkpoint_every": 100},
    }
    config = tiny_config(corpus, tmp_path / "cache", **sections)
    config["model"]["d_model"] = 16
    train(from_dict(ExperimentConfig, config), tmp_path / "run", progress=False)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["group_size"] for r in records] == [1, 3, 4, 4, 4]
    assert [r["shuffled"] for r in records] == [0, 0, 0, 0.5, 1]


def test_infill_keeps_known_tokens_and_uses_the_factorisation_nll_scores():
    """Greedy infilling k at a time in left-to-right order draws each group's argmax of the
    teacher-forced logits that `predict` (and `nll`) use for that grouping."""
    torch.manual_seed(1)
    model = tiny()
    tokens = torch.randint(0, VOCAB, (3, 9))
    known = torch.zeros_like(tokens, dtype=torch.bool)
    known[:, :3] = True
    for k, passes in ((1, 6), (2, 3), (4, 2), (None, 1)):
        objective = build_objective(
            "any_subset", VOCAB, order="identity", group_size=k or 6, position_scale=0.5
        )
        filled, nfe = infill(
            model, tokens, known, objective=objective, group_size=k, temperature=0.0
        )
        assert nfe == passes and torch.equal(filled[known], tokens[known])
        predictions, _ = objective.predict(model, Batch(filled, ~known))
        assert torch.equal(predictions, filled), k


def test_infill_fills_holes_anywhere_in_random_order():
    model = tiny()
    objective = build_objective("any_subset", VOCAB, group_size=2)
    tokens = torch.randint(0, VOCAB, (2, 10))
    known = torch.tensor([[1, 0, 0, 1, 1, 0, 1, 0, 1, 1], [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]]).bool()
    generator = torch.Generator().manual_seed(3)
    filled, nfe = infill(
        model,
        tokens,
        known,
        objective=objective,
        group_size=2,
        order="random",
        generator=generator,
    )
    assert nfe == 2 and torch.equal(filled[known], tokens[known])
    assert filled.min() >= 0 and filled.max() < VOCAB


@pytest.mark.parametrize(
    "options",
    [
        {"group_size": 0},
        {"groups": 0},
        {"group_size": 2, "groups": 2},
        {"partition": "blocks"},
        {"curriculum_steps": -1},
        {"order": "backwards"},
        {"eval_orders": 0},
    ],
)
def test_bad_options_are_config_errors(options):
    with pytest.raises(ConfigError):
        build_objective("any_subset", VOCAB, **options)


@pytest.mark.parametrize("options", [{"group_size": 0}, {"order": "sideways"}, {"seed": [1, 2]}])
def test_bad_sampler_options_are_config_errors(options):
    model = tiny(n_layers=1).float()
    with pytest.raises(ConfigError):
        seqlab.generate(model, [[1, 2]], max_new_tokens=2, sampler="any_subset", **options)

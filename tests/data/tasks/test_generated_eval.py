"""Generation-based evaluation (`generate_eval`) and the text infilling metric (`infill_span`)."""

import random

import pytest
import torch

import seqlab
from seqlab.config import DataConfig, ExperimentConfig, ModelConfig, TaskConfig
from seqlab.data.tasks import build_task
from seqlab.data.tasks.base import infill_spans
from seqlab.errors import ConfigError
from seqlab.harness.grid import HIGHER_IS_BETTER
from seqlab.objectives import Batch, build_objective
from seqlab.objectives.ar import Autoregressive

SEQ_LEN, SPAN = 16, 4


def tiny(objective, vocab_size):
    config = ModelConfig(
        mixer="attention",
        d_model=16,
        n_layers=1,
        n_heads=2,
        vocab_size=objective.model_vocab_size(vocab_size),
    )
    return seqlab.build_model(config).double()


def star_graph(**options):
    options = {"degree": 2, "path_length": 3, "num_nodes": 8, "eval_examples": 8, **options}
    return build_task(ExperimentConfig(task=TaskConfig(name="star_graph", options=options)))


class Oracle(Autoregressive):
    """Generates the true answers (so generated metrics come from generate, not predict)."""

    def generate(self, model, batch):
        return batch.tokens, batch.mask


@pytest.mark.parametrize("name", ["ar", "masked_diffusion", "insertion"])
def test_star_graph_reports_generated_metrics_by_default(name):
    task = star_graph()
    objective = build_objective(name, task.vocab_size)
    metrics = task.evaluate(tiny(objective, task.vocab_size), objective, batch_size=4)
    assert 0 <= metrics["generated_accuracy"] <= 1
    assert 0 <= metrics["generated_exact_match"] <= 1
    assert "generated_accuracy" not in star_graph(generate_eval=False).evaluate(
        tiny(objective, task.vocab_size), objective, batch_size=4
    )


def test_generated_metrics_score_generate():
    torch.manual_seed(0)
    task = star_graph()
    objective = Oracle().bind(task.vocab_size)
    metrics = task.evaluate(tiny(objective, task.vocab_size), objective)
    assert metrics["generated_accuracy"] == metrics["generated_exact_match"] == 1.0
    assert metrics["exact_match"] < 1.0  # predict, from an untrained model


def test_compare_ranks_the_new_metrics_in_their_direction():
    assert HIGHER_IS_BETTER["generated_exact_match"] and HIGHER_IS_BETTER["infill_accuracy"]
    assert not HIGHER_IS_BETTER["infill_nll"]


@pytest.fixture(scope="module")
def text_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "sequence", "model", "token", "span"]
    (root / "a.txt").write_text(" ".join(rng.choice(words) for _ in range(3000)) + "\n")
    return root


def text_task(root, **options):
    data = DataConfig(
        corpus="path", path=str(root / "a.txt"), seq_len=SEQ_LEN, cache_dir=str(root / "cache")
    )
    return build_task(ExperimentConfig(task=TaskConfig(name="text", options=options), data=data))


class Recording:
    """Wraps an objective; records the masks `nll` and `generate` receive."""

    def __init__(self, objective):
        self.objective, self.masks = objective, []

    def __getattr__(self, name):
        return getattr(self.objective, name)

    def nll(self, model, batch):
        if batch.mask is not None:
            self.masks.append(batch.mask.cpu())
        return self.objective.nll(model, batch)

    def generate(self, model, batch):
        self.masks.append(batch.mask.cpu())
        return self.objective.generate(model, batch)


def test_infill_spans_are_seeded_per_row_and_the_same_for_every_objective(text_corpus):
    task = text_task(text_corpus, infill_span=SPAN)
    masks = {}
    for name, batch_size in (("ar", 16), ("any_order", 5), ("masked_diffusion", 7)):
        objective = Recording(build_objective(name, task.vocab_size))
        metrics = task.evaluate(
            tiny(objective, task.vocab_size), objective, batch_size=batch_size, max_tokens=480
        )
        assert {"infill_nll", "infill_accuracy"} <= set(metrics)
        nll_masks, generate_masks = nll_and_generate_masks(objective.masks)
        assert torch.equal(torch.cat(nll_masks), torch.cat(generate_masks))
        masks[name] = torch.cat(nll_masks)
    first = masks["ar"]
    assert first.shape == (30, SEQ_LEN + 1) and bool((first.sum(1) == SPAN).all())
    assert all(torch.equal(first, m) for m in masks.values())
    assert not first[:, 0].any() and len({int(r.int().argmax()) for r in first}) > 5
    assert torch.equal(infill_spans("validation", 3, 4, SEQ_LEN + 1, SPAN), first[3:7])


def nll_and_generate_masks(masks):
    """The recorded masks alternate nll, generate per batch."""
    return masks[0::2], masks[1::2]


def test_any_order_infill_nll_is_its_nll_with_the_span_scored(text_corpus):
    task = text_task(text_corpus, infill_span=SPAN)
    objective = build_objective("any_order", task.vocab_size, order="identity")
    model = tiny(objective, task.vocab_size)
    metrics = task.evaluate(model, objective, batch_size=8, max_tokens=160)
    nats, count, row = 0.0, 0, 0
    for batch in task.eval_batches("validation", 8, 160):
        span = infill_spans("validation", row, batch.tokens.shape[0], SEQ_LEN + 1, SPAN)
        result = objective.nll(model.eval(), Batch(batch.tokens, span))
        nats, count, row = nats + result.nats, count + result.tokens, row + span.shape[0]
    assert metrics["infill_nll"] == pytest.approx(nats / count, rel=1e-12)
    # the context after the span is read (it comes first in the order), unlike under AR
    batch = next(iter(task.eval_batches("validation", 8, 160)))
    span = infill_spans("validation", 0, 8, SEQ_LEN + 1, SPAN)
    after = span.int().cumsum(1).bool() & ~span
    other = torch.where(after, (batch.tokens + 1) % task.vocab_size, batch.tokens)
    ar = build_objective("ar", task.vocab_size)
    ar_model = tiny(ar, task.vocab_size).eval()
    assert objective.nll(model, Batch(other, span)).nats != pytest.approx(
        objective.nll(model, Batch(batch.tokens, span)).nats, rel=1e-9
    )
    assert ar.nll(ar_model, Batch(other, span)).nats == pytest.approx(
        ar.nll(ar_model, Batch(batch.tokens, span)).nats, rel=1e-12
    )


def test_masked_diffusion_noises_only_the_span(text_corpus):
    task = text_task(text_corpus, infill_span=SPAN)
    objective = build_objective("masked_diffusion", task.vocab_size, eval_samples=8)
    model = tiny(objective, task.vocab_size).eval()
    batch = next(iter(task.eval_batches("validation", 8)))
    span = infill_spans("validation", 0, 8, SEQ_LEN + 1, SPAN)
    inputs = []
    hook = model.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
    objective.nll(model, Batch(batch.tokens, span))
    objective.generate(model, Batch(batch.tokens, span))
    hook.remove()
    masked = torch.stack([x == objective.mask_id for x in inputs])
    assert masked.any() and not (masked & ~span).any()
    for x in inputs:
        assert torch.equal(x[~span], batch.tokens[~span])


def test_infill_span_must_fit_a_text_row(text_corpus):
    with pytest.raises(ConfigError, match="infill_span"):
        text_task(text_corpus, infill_span=SEQ_LEN + 1)
    with pytest.raises(ConfigError, match="infill_span"):
        text_task(text_corpus, infill_span=0)


def test_star_graph_generates_when_the_objective_can_and_refuses_only_when_asked():
    from seqlab.harness.grid import CompareConfig, metric_for

    task = star_graph()
    uniform = build_objective("uniform_diffusion", task.vocab_size)
    assert not uniform.generates and build_objective("ar", task.vocab_size).generates
    metrics = task.evaluate(tiny(uniform, task.vocab_size), uniform, batch_size=4)
    assert "generated_accuracy" not in metrics and "accuracy" in metrics
    task.check_objective(uniform)  # the default: score generation where there is one
    with pytest.raises(ConfigError, match="generate"):
        star_graph(generate_eval=True).check_objective(uniform)
    assert metric_for(CompareConfig(), "star_graph", True) == "generated_exact_match"
    assert metric_for(CompareConfig(), "sort", True) == "accuracy"


def test_generate_eval_on_text_windows_is_refused(text_corpus):
    with pytest.raises(ConfigError, match="generate_eval"):
        text_task(text_corpus, generate_eval=True)
    with pytest.raises(ConfigError, match="infill_span"):
        text_task(text_corpus, infill_span=True)

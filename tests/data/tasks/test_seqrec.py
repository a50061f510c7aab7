"""The `seqrec` task: reading interaction files, the k-core filter, the leave-one-out split by
time, HR/NDCG by hand, seeded negatives outside the history, and tiny AR and masked runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from seqlab.config import ExperimentConfig, ModelConfig, from_dict
from seqlab.data.tasks.seqrec import (
    FIRST_ITEM,
    PAD,
    SequentialRecommendation,
    hit_and_ndcg,
    k_core,
    read_interactions,
    target_ranks,
)
from seqlab.errors import ConfigError, DataError
from seqlab.harness.grid import HIGHER_IS_BETTER
from seqlab.model import build_model
from seqlab.objectives import build_objective
from seqlab.objectives.ar import Autoregressive
from seqlab.train.loop import build_run, train

STEP = 7  # the pattern: each user's next item is (previous + STEP) mod ITEMS


def write_pattern(path, users: int = 120, items: int = 40, length: int = 10, fmt="recbole"):
    """A file where user u's items follow `next = (previous + STEP) % items` from a seeded
    start, with increasing timestamps, its lines shuffled."""
    rng = np.random.default_rng(0)
    lines = []
    for u in range(users):
        item = int(rng.integers(items))
        for k in range(length):
            lines.append((f"{u}", f"{item}", f"{1000 * u + 10 * k}"))
            item = (item + STEP) % items
    order = rng.permutation(len(lines))
    if fmt == "recbole":
        head = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        body = "".join(f"{u}\t{i}\t4\t{t}\n" for u, i, t in (lines[j] for j in order))
    else:
        head = "timestamp,user_id,item_id\n"
        body = "".join(f"{t},{u},{i}\n" for u, i, t in (lines[j] for j in order))
    path.write_text(head + body)
    return path


def task_on(path, **options) -> SequentialRecommendation:
    return SequentialRecommendation(path=str(path), **options)


def test_reads_recbole_and_csv_files_alike(tmp_path):
    recbole = tmp_path / "a.inter"
    recbole.write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\t3\t5\n2\t11\t4\t7.5\n"
    )
    comma = tmp_path / "a.csv"
    comma.write_text('stamp,who,what,extra\n5,1,10,x\n7.5,2,"11",y\n\n')
    tab = tmp_path / "a.tsv"
    tab.write_text("who\twhat\tstamp\n1\t10\t5\n2\t11\t7.5\n")
    expected = [("1", "10", 5.0), ("2", "11", 7.5)]
    assert read_interactions(recbole) == expected
    columns = ("who", "what", "stamp")
    assert read_interactions(comma, "csv", columns) == expected
    assert read_interactions(tab, "csv", columns) == expected


def test_bad_files_fail_with_one_clear_line(tmp_path):
    file = tmp_path / "bad.csv"
    file.write_text("user_id,item_id,time\n1,2,3\n")
    with pytest.raises(DataError, match="no column 'timestamp'"):
        read_interactions(file, "csv")
    file.write_text("user_id,item_id,timestamp\n1,2,3\n1,2,soon\n")
    with pytest.raises(DataError, match="line 3: timestamp 'soon' is not a finite number"):
        read_interactions(file, "csv")
    with pytest.raises(DataError, match="scripts/movielens.sh"):
        read_interactions(tmp_path / "absent.inter")
    with pytest.raises(ConfigError, match="format"):
        read_interactions(file, "parquet")
    with pytest.raises(ConfigError, match="max_len"):
        task_on(write_pattern(tmp_path / "p.inter"), max_len=0)


@pytest.mark.parametrize("stamp", ["nan", "inf", "-inf", "NaN"])
def test_non_finite_timestamps_are_a_data_error_naming_the_line(tmp_path, stamp):
    file = tmp_path / "a.csv"
    file.write_text(f"user_id,item_id,timestamp\n1,2,3\n1,3,{stamp}\n")
    with pytest.raises(DataError, match=f"a.csv line 3: timestamp '{stamp}' is not a finite"):
        read_interactions(file, "csv")


def test_a_byte_order_mark_is_read_and_non_utf8_bytes_are_a_data_error(tmp_path):
    file = tmp_path / "a.csv"
    file.write_bytes(b"\xef\xbb\xbfuser_id,item_id,timestamp\n1,2,3\n")
    assert read_interactions(file, "csv") == [("1", "2", 3.0)]
    file.write_bytes("user_id,item_id,timestamp\nJosé,2,3\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"a.csv: not UTF-8 text \(invalid continuation byte\)"):
        read_interactions(file, "csv")


def test_k_core_drops_users_and_items_until_stable():
    # at k=3 users x, z and items b, c go first; y is left with one item, then nothing is
    rows = [("x", "a", 0), ("x", "b", 1), ("y", "a", 2), ("y", "b", 3), ("y", "c", 4)]
    rows += [("z", "a", 5), ("z", "c", 6)]
    assert k_core(rows, 2) == rows
    assert k_core(rows, 3) == []
    dense = [(u, i, 0.0) for u in "pqr" for i in "st"] + [("r", "v", 0.0)]
    assert k_core(dense, 2) == [r for r in dense if r[1] != "v"]
    assert k_core(dense, 0) == dense


def test_leave_one_out_by_time_with_ties_in_file_order(tmp_path):
    file = tmp_path / "ties.csv"
    # user 1: t=1 item 30, then two items at t=2 (file order 20 before 10), then t=9 item 40;
    # user 2 has two interactions: it only trains
    file.write_text("user_id,item_id,timestamp\n1,40,9\n1,20,2\n2,10,1\n1,30,1\n1,10,2\n2,20,3\n")
    task = task_on(file, format="csv", min_interactions=0, max_len=3)
    ids = task.item_index  # numeric order: 10, 20, 30, 40 -> 1, 2, 3, 4
    assert ids == {"10": 1, "20": 2, "30": 3, "40": 4} and task.vocab_size == 5
    seq = [ids[i] for i in ("30", "20", "10", "40")]
    assert task.sequences[0].tolist() == seq
    train, mask = task.rows["train"]
    assert train.tolist() == [[PAD, PAD, seq[0], seq[1]], [PAD, PAD, ids["10"], ids["20"]]]
    assert mask.tolist() == [[False, False, True, True], [False, False, True, True]]
    valid, mask = task.rows["validation"]
    assert valid.tolist() == [[PAD, seq[0], seq[1], seq[2]]] and mask[0].tolist() == [0, 0, 0, 1]
    test, _ = task.rows["test"]
    assert test.tolist() == [seq]
    truncated = task_on(file, format="csv", min_interactions=0, max_len=2)
    assert truncated.rows["test"][0].tolist() == [seq[1:]]


def test_hr_and_ndcg_by_hand_at_the_cutoff_edge():
    # target column 0; row r has exactly r other candidates scoring above it, one tie
    scores = torch.zeros(4, 20, dtype=torch.float64)
    scores[:, 0] = 0.5
    scores[1, 1:10] = 1.0  # 9 above: rank 10
    scores[2, 1:11] = 1.0  # 10 above: rank 11
    scores[3, 1] = 0.5  # a tie counts against the target: rank 2
    ranks = target_ranks(scores, torch.zeros(4, dtype=torch.long))
    assert ranks.tolist() == [1, 10, 11, 2]
    hit, ndcg = hit_and_ndcg(ranks)
    assert hit.tolist() == [1.0, 1.0, 0.0, 1.0]
    expected = [1.0, 1 / math.log2(11), 0.0, 1 / math.log2(3)]
    assert torch.allclose(ndcg, torch.tensor(expected, dtype=torch.float64))
    nan = torch.full((1, 5), float("nan"), dtype=torch.float64)
    assert target_ranks(nan, torch.zeros(1, dtype=torch.long)).tolist() == [5]


def test_sampled_negatives_are_unseen_and_seeded(tmp_path):
    file = write_pattern(tmp_path / "p.inter", users=30, items=40)
    task = task_on(file, negatives=25, min_interactions=0)
    negatives = task.sampled_negatives("test")
    assert negatives.shape == (30, 25)
    for row, user in enumerate(task.row_users["test"]):
        drawn = negatives[row].tolist()
        assert len(set(drawn)) == 25 and not set(drawn) & set(task.sequences[user].tolist())
        assert min(drawn) >= FIRST_ITEM and max(drawn) < task.vocab_size
    again = task_on(file, negatives=25, min_interactions=0)
    assert torch.equal(again.sampled_negatives("test"), negatives)
    assert torch.equal(again.sampled_negatives("validation"), negatives)
    # 40 items, 10 seen: 30 unseen
    few = task_on(file, negatives=35, min_interactions=0).sampled_negatives("test")
    assert ((few >= 0).sum(1) == 30).all() and (few[:, 30:] == -1).all()


def test_batches_are_seeded_and_split_by_rank(tmp_path):
    task = task_on(write_pattern(tmp_path / "p.inter"))
    one = task.batch("train", 3, 8, seed=1)
    assert torch.equal(one.tokens, task.batch("train", 3, 8, seed=1).tokens)
    assert not torch.equal(one.tokens, task.batch("train", 4, 8, seed=1).tokens)
    halves = [task.batch("train", 3, 4, seed=1, rank=r, world_size=2).tokens for r in (0, 1)]
    assert torch.equal(torch.cat(halves), one.tokens)
    rows = [b.tokens.shape[0] for b in task.eval_batches("test", 50)]
    assert rows == [50, 50, 20]
    with pytest.warns(UserWarning, match="scores 10 of the 120"):
        assert sum(b.tokens.shape[0] for b in task.eval_batches("test", 4, 510)) == 10


def test_ar_next_log_probs_agree_with_its_nll(tmp_path):
    task = task_on(write_pattern(tmp_path / "p.inter"))
    objective = build_objective("ar", task.vocab_size)
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=task.vocab_size, d_model=16, n_layers=1)).double()
    batch = next(task.eval_batches("test", 6))
    with torch.no_grad():
        log_probs = objective.next_log_probs(model, batch.tokens[:, :-1])
        target = -log_probs.gather(1, batch.tokens[:, -1:]).sum()
        assert math.isclose(objective.nll(model, batch).nats, float(target), rel_tol=1e-9)
    masked = build_objective("masked_diffusion", task.vocab_size)
    config = ModelConfig(vocab_size=task.vocab_size + 1, d_model=16, n_layers=1)
    model = build_model(config).double()
    guess, _ = masked.predict(model, batch)
    log_probs = masked.next_log_probs(model, batch.tokens[:, :-1])
    assert log_probs.shape == (6, task.vocab_size)
    assert torch.equal(log_probs.argmax(-1), guess[:, -1])


def test_objectives_without_next_log_probs_are_refused_before_training(tmp_path):
    task = task_on(write_pattern(tmp_path / "p.inter"))
    with pytest.raises(ConfigError, match="next_log_probs"):
        task.check_objective(build_objective("uniform_diffusion", task.vocab_size))
    with pytest.raises(ConfigError, match="next_log_probs"):
        task.check_objective(build_objective("any_order", task.vocab_size))


def seqrec_config(path, objective: str = "ar", steps: int = 6, **train) -> ExperimentConfig:
    return from_dict(
        ExperimentConfig,
        {
            "model": {"mixer": "attention", "d_model": 32, "n_layers": 1, "n_heads": 2},
            "objective": {"name": objective},
            "task": {"name": "seqrec", "path": str(path), "max_len": 8},
            "train": {
                "steps": steps,
                "batch_size": 16,
                "lr": 1e-2,
                "warmup": 2,
                "eval_every": steps,
                "eval_tokens": 4096,
                "checkpoint_every": steps,
                "log_every": steps,
                "threads": 1,
                **train,
            },
        },
    )


def test_an_untrained_model_ranks_near_chance(tmp_path):
    path = write_pattern(tmp_path / "p.inter", users=300, items=100, length=8)
    parts = build_run(seqrec_config(path))
    metrics = parts.task.evaluate(parts.model, parts.objective, split="test", batch_size=100)
    assert metrics["tokens"] == 300 and parts.task.n_items == 100
    assert abs(metrics["full_hr10"] - 10 / 100) < 0.08, metrics
    assert abs(metrics["sampled_hr10"] - 10 / 101) < 0.08, metrics
    assert metrics["full_ndcg10"] < 0.1 and metrics["sampled_ndcg10"] < 0.1, metrics
    assert abs(metrics["nll"] - math.log(100)) < 1.0, metrics


@pytest.mark.parametrize("objective", ["ar", "masked_diffusion"])
def test_a_tiny_run_trains_and_reports_ranking_metrics(tmp_path, objective):
    path = write_pattern(tmp_path / "p.csv", users=40, fmt="csv")
    config = seqrec_config(path, objective)
    config.task.options["format"] = "csv"
    summary = train(config, tmp_path / "run", progress=False)
    validation = summary["validation"]
    for key in ("nll", "accuracy", "full_hr10", "full_ndcg10", "sampled_hr10", "sampled_ndcg10"):
        assert math.isfinite(validation[key]), validation
    assert validation["full_ndcg10"] <= validation["full_hr10"] <= 1.0
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    logged = [json.loads(line) for line in lines if "val_full_ndcg10" in line]
    assert logged and logged[-1]["val_full_ndcg10"] == validation["full_ndcg10"]


def test_the_harness_ranks_by_full_ndcg_higher_is_better():
    assert SequentialRecommendation.metric_of_record == "full_ndcg10"
    for key in ("full_hr10", "full_ndcg10", "sampled_hr10", "sampled_ndcg10"):
        assert HIGHER_IS_BETTER[key] is True


def test_a_small_model_learns_a_deterministic_item_pattern(tmp_path):
    path = write_pattern(tmp_path / "p.inter", users=200, items=60, length=8)
    config = seqrec_config(path, steps=60, lr=2e-2, warmup=10)
    assert build_run(config).task.n_items == 60  # chance: HR@10 1/6, NDCG@10 about 0.07
    validation = train(config, tmp_path / "run", progress=False)["validation"]
    assert validation["full_hr10"] > 0.9 and validation["full_ndcg10"] > 0.8, validation


class Oracle(Autoregressive):
    """Scores every context item 10, the pattern's true next item 5 and the rest 0."""

    items = 40

    def next_log_probs(self, model, context):
        scores = torch.zeros(len(context), self.vocab_size, dtype=torch.float64)
        scores.scatter_(1, context, 10.0)
        following = (context[:, -1] - FIRST_ITEM + STEP) % self.items + FIRST_ITEM
        scores[torch.arange(len(context)), following] = 5.0
        return scores


def test_exclude_history_drops_seen_items_from_the_full_ranking(tmp_path):
    file = write_pattern(tmp_path / "p.inter", users=30, items=Oracle.items, length=20)
    model = build_model(ModelConfig(vocab_size=Oracle.items + 1, d_model=16, n_layers=1))
    results = {}
    for exclude in (False, True):
        task = task_on(file, min_interactions=0, max_len=12, exclude_history=exclude)
        oracle = Oracle().bind(task.vocab_size)
        results[exclude] = task.evaluate(model, oracle, split="test")
    # kept, the 12 context items outrank the target (rank 13); excluded, it ranks first
    assert results[False]["full_hr10"] == 0.0 and results[True]["full_hr10"] == 1.0
    assert results[True]["full_ndcg10"] == 1.0
    for metrics in results.values():  # negatives are unseen: the target always ranks first
        assert metrics["sampled_hr10"] == 1.0 and metrics["sampled_ndcg10"] == 1.0

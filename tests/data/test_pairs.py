"""`data.format: pairs`: source<TAB>target lines become rows `source SEP target EOS` with only
the target scored, split by a hash of the source; bad files fail with one clear line."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import yaml

from seqlab.cli import main
from seqlab.config import DataConfig, ExperimentConfig, TaskConfig, from_dict, to_dict
from seqlab.data import load_pairs
from seqlab.data.tasks import build_task
from seqlab.errors import ConfigError, DataError
from seqlab.train.loop import train
from tests.helpers import tiny_config

SEQ_LEN = 24


def documented_split(source: str) -> str:
    u = int.from_bytes(hashlib.sha1(source.encode()).digest()[:8], "big") / 2**64
    return "validation" if u < 0.05 else "test" if u < 0.10 else "train"


def write_pairs(path, n: int = 200) -> list[tuple[str, str]]:
    """`n` pairs: a number written out and its digits reversed (distinct sources)."""
    pairs = [(f"n{i}", str(i)[::-1] + "é") for i in range(n)]
    path.write_text("".join(f"{s}\t{t}\n" for s, t in pairs) + "\n", encoding="utf-8")
    return pairs


def test_rows_are_source_tab_target_newline_with_only_the_target_scored(tmp_path):
    file = tmp_path / "pairs.tsv"
    pairs = dict(write_pairs(file))
    data = load_pairs(str(file), tokenizer="byte", vocab_size=256, seq_len=SEQ_LEN)
    seen = {}
    for split in ("train", "validation", "test"):
        for batch in data.eval_batches(split, batch_size=7):
            for tokens, mask in zip(batch.tokens, batch.mask, strict=True):
                line = bytes(tokens.tolist()).decode()
                source, rest = line.split("\t")
                target = rest[: rest.index("\n")]
                assert pairs[source] == target and documented_split(source) == split
                scored = bytes(tokens[mask].tolist()).decode()
                assert scored == target + "\n"
                assert mask.nonzero().min() == len(source.encode()) + 1
                seen[source] = split
    assert len(seen) == len(pairs)
    assert set(seen.values()) == {"train", "validation", "test"}


def test_training_batches_are_deterministic_and_ranks_share_the_global_batch(tmp_path):
    file = tmp_path / "pairs.tsv"
    write_pairs(file)
    data = load_pairs(str(file), tokenizer="byte", vocab_size=256, seq_len=SEQ_LEN)
    again = load_pairs(str(file), tokenizer="byte", vocab_size=256, seq_len=SEQ_LEN)
    first = data.batch("train", step=3, batch_size=6, seed=1)
    second = again.batch("train", step=3, batch_size=6, seed=1)
    assert torch.equal(first.tokens, second.tokens) and torch.equal(first.mask, second.mask)
    assert not torch.equal(first.tokens, data.batch("train", step=4, batch_size=6, seed=1).tokens)
    parts = [data.batch("train", 3, 2, seed=1, rank=r, world_size=3) for r in range(3)]
    assert torch.equal(torch.cat([p.tokens for p in parts]), first.tokens)
    assert first.mask.any(1).all() and not first.mask[:, 0].any()


def test_a_folder_of_pair_files_and_the_bpe_tokenizer(tmp_path):
    pytest.importorskip("tokenizers")
    write_pairs(tmp_path / "a.tsv", 120)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "c.tsv").write_text("".join(f"m{i}\tx{i}\n" for i in range(120)))
    (tmp_path / ".hidden").write_text("no tab here\n")
    data = load_pairs(str(tmp_path), tokenizer="bpe", vocab_size=300, seq_len=SEQ_LEN)
    assert sum(len(rows) for rows in data.rows.values()) == 240
    batch = next(data.eval_batches("validation", batch_size=4))
    row = batch.tokens[0][: int(batch.mask[0].nonzero().max()) + 1].tolist()
    assert data.tokenizer.decode(row).count("\t") == 1 and data.tokenizer.decode(row)[-1] == "\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a\tb\nno tab\n", r"line 2: expected one 'source<TAB>target' pair per line, found no tab"),
        ("a\tb\tc\n", r"line 1: expected .* found 2 tabs"),
        ("a\tb\n\nsource\t\n", r"line 3: empty target"),
        ("a\t" + "x" * 40 + "\n", r"line 1: the pair is 43 tokens .* data.seq_len=24 allows 25"),
        ("\n\n", r"no pairs; expected one 'source<TAB>target' pair per line"),
        ("a\tb\n", r"no pair falls in the (validation|test) split"),
    ],
)
def test_bad_files_name_the_line_and_the_expected_format(tmp_path, text, message):
    file = tmp_path / "bad.tsv"
    file.write_text(text)
    with pytest.raises(DataError, match=message):
        load_pairs(str(file), tokenizer="byte", vocab_size=256, seq_len=SEQ_LEN)


def test_missing_paths_and_formats_are_user_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_pairs(str(tmp_path / "nope.tsv"), tokenizer="byte", vocab_size=256, seq_len=8)
    with pytest.raises(DataError, match="needs data.path"):
        load_pairs(None, tokenizer="byte", vocab_size=256, seq_len=8)
    (tmp_path / "binary.tsv").write_bytes(b"a\tb\n\xff\xfe\n")
    with pytest.raises(DataError, match="not a UTF-8 text file"):
        load_pairs(str(tmp_path / "binary.tsv"), tokenizer="byte", vocab_size=256, seq_len=8)
    with pytest.raises(ConfigError, match="data.format must be one of text, pairs"):
        DataConfig(format="tsv")
    with pytest.raises(ConfigError, match="set data.corpus: path"):
        DataConfig(format="pairs")


def test_the_text_task_reads_pairs_and_scores_answers(tmp_path):
    file = tmp_path / "pairs.tsv"
    write_pairs(file)
    data = DataConfig(corpus="path", path=str(file), format="pairs", seq_len=SEQ_LEN)
    task = build_task(ExperimentConfig(task=TaskConfig(name="text"), data=data))
    assert task.scores_answers and task.vocab_size == 256 and task.seq_len == SEQ_LEN + 1
    assert task.corpus is None and task.bytes_per_token("test") is None
    batch = task.batch("train", 0, 4, seed=0)
    assert batch.mask is not None and batch.tokens.shape[1] <= SEQ_LEN + 1


def pairs_config(tmp_path, objective: str) -> ExperimentConfig:
    file = tmp_path / "pairs.tsv"
    write_pairs(file)
    config = tiny_config(
        file,
        tmp_path / "cache",
        model={"d_model": 32, "n_layers": 1},
        objective={"name": objective},
        data={"format": "pairs", "seq_len": SEQ_LEN},
        train={"steps": 12, "lr": 1e-2, "eval_every": 12, "eval_tokens": 250, "batch_size": 8},
    )
    return from_dict(ExperimentConfig, config)


@pytest.mark.parametrize("objective", ["ar", "masked_diffusion"])
def test_a_tiny_model_learns_from_pairs(tmp_path, objective):
    summary = train(pairs_config(tmp_path, objective), tmp_path / "run", progress=False)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(line)["loss"] for line in lines if '"loss"' in line]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    assert "accuracy" in json.dumps(summary), summary


def test_the_cli_refuses_a_bad_pairs_file_in_one_line(tmp_path, capsys):
    config = pairs_config(tmp_path, "ar")
    (tmp_path / "pairs.tsv").write_text("a\tb\nno tab\n")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(to_dict(config)))
    code = main(["train", "--config", str(path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "line 2: expected one 'source<TAB>target'" in err[0]

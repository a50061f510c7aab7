import sys

import datasets
import pytest

from seqlab.data import load_corpus
from seqlab.errors import DataError, SeqlabError

SPLITS = ("train", "validation", "test")


def rows(prefix: str, count: int) -> list[str]:
    return [f"{prefix} row {i}: ünïcode text" for i in range(count)]


def joined(texts: list[str]) -> str:
    return "".join(text + "\n" for text in texts)


def split_texts(corpus) -> dict[str, str]:
    return {split: corpus.tokenizer.decode(corpus.splits[split]) for split in SPLITS}


def test_hf_local_dataset_dict_keeps_its_splits_and_maps_valid(tmp_path):
    data = {"train": rows("train", 30), "valid": rows("valid", 5), "test": rows("test", 4)}
    dataset = datasets.DatasetDict(
        {
            name: datasets.Dataset.from_dict({"text": texts, "id": list(range(len(texts)))})
            for name, texts in data.items()
        }
    )
    dataset.save_to_disk(str(tmp_path / "ds"))
    cache = tmp_path / "cache"
    corpus = load_corpus("hf", path=str(tmp_path / "ds"), cache_dir=cache)
    assert split_texts(corpus) == {
        "train": joined(data["train"]),
        "validation": joined(data["valid"]),
        "test": joined(data["test"]),
    }
    assert corpus.num_bytes["validation"] == len(joined(data["valid"]).encode())
    assert "validation='valid'" in corpus.source
    again = load_corpus("hf", path=str(tmp_path / "ds"), cache_dir=cache)
    assert len([p for p in (cache / "corpora").iterdir() if p.is_dir()]) == 1
    assert split_texts(again) == split_texts(corpus)


def test_hf_single_dataset_is_split_by_row_position(tmp_path):
    texts = rows("only", 40) + [None]
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "ds"))
    corpus = load_corpus("hf", path=str(tmp_path / "ds"), cache_dir=tmp_path / "cache")
    assert split_texts(corpus) == {
        "train": joined(texts[:37]),
        "validation": joined(texts[37:39]),
        "test": joined(texts[39:40]),
    }
    assert "row position" in corpus.source


def test_hf_missing_test_split_is_cut_from_the_end_of_train(tmp_path):
    train, validation = rows("train", 20), rows("dev", 3)
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": train}),
            "dev": datasets.Dataset.from_dict({"text": validation}),
        }
    ).save_to_disk(str(tmp_path / "ds"))
    corpus = load_corpus("hf", path=str(tmp_path / "ds"), cache_dir=tmp_path / "cache")
    assert split_texts(corpus) == {
        "train": joined(train[:19]),
        "validation": joined(validation),
        "test": joined(train[19:]),
    }


def test_hf_split_option_uses_only_that_split(tmp_path):
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": rows("train", 20)}),
            "extra": datasets.Dataset.from_dict({"text": rows("extra", 20)}),
        }
    ).save_to_disk(str(tmp_path / "ds"))
    corpus = load_corpus(
        "hf", path=str(tmp_path / "ds"), hf_split="extra", cache_dir=tmp_path / "cache"
    )
    assert split_texts(corpus)["train"] == joined(rows("extra", 20)[:18])
    with pytest.raises(DataError, match="no split 'nope'.*train, extra"):
        load_corpus("hf", path=str(tmp_path / "ds"), hf_split="nope", cache_dir=tmp_path)


def test_hf_missing_text_column_lists_the_columns(tmp_path):
    datasets.Dataset.from_dict({"content": ["a", "b", "c"], "label": [0, 1, 0]}).save_to_disk(
        str(tmp_path / "ds")
    )
    with pytest.raises(DataError, match="no column 'text'.*content, label"):
        load_corpus("hf", path=str(tmp_path / "ds"), cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match="'label'.*not text"):
        load_corpus("hf", path=str(tmp_path / "ds"), text_field="label", cache_dir=tmp_path)


def test_hf_too_few_rows_is_a_data_error(tmp_path):
    datasets.Dataset.from_dict({"text": ["a", "b"]}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DataError, match="2 rows"):
        load_corpus("hf", path=str(tmp_path / "ds"), cache_dir=tmp_path / "cache")


def test_hf_folder_that_is_not_a_saved_dataset_is_a_data_error(tmp_path):
    (tmp_path / "ds").mkdir()
    with pytest.raises(DataError, match="save_to_disk"):
        load_corpus("hf", path=str(tmp_path / "ds"), cache_dir=tmp_path / "cache")


def test_hf_without_datasets_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(SeqlabError, match=r"pip install 'seqlab\[hf\]'"):
        load_corpus("hf", path=str(tmp_path), cache_dir=tmp_path)

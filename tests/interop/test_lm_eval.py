"""The `seqlab` model type of lm-evaluation-harness, on tasks defined locally in YAML."""

from __future__ import annotations

import functools
import json
import math
import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lm_eval  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

import seqlab  # noqa: E402
from seqlab.config import DataConfig, ExperimentConfig, ModelConfig, ObjectiveConfig  # noqa: E402
from seqlab.data.tokenizers import ByteTokenizer, HFTokenizer  # noqa: E402
from seqlab.errors import ConfigError, DataError  # noqa: E402
from seqlab.interop.lm_eval import SeqlabLM, main  # noqa: E402
from seqlab.objectives import Batch, build_objective  # noqa: E402
from tests.data.test_hf_tokenizer import make_tokenizer  # noqa: E402

SEQ_LEN = 16
MC = [
    {"question": "Q: 1+1=", "choices": [" 2", " 3", " four"], "answer": 0},
    {"question": "Q: sky is", "choices": [" blue", " green"], "answer": 0},
    {"question": "Q: a b c", "choices": [" d", " e", " f", " g"], "answer": 3},
    {"question": "", "choices": ["yes", "no"], "answer": 1},
]
DOCS = ["a short document", "a longer document that spans more than one window of sixteen bytes"]
GEN = [{"prompt": "ab", "target": "c"}, {"prompt": "hello", "target": " world"}]


def save_model(directory, objective: str = "ar", vocab: int = 256):
    torch.manual_seed(0)
    config = ModelConfig(
        mixer="attention", d_model=32, n_layers=2, n_heads=4, vocab_size=vocab, init_std=0.3
    )
    model = seqlab.build_model(config)
    experiment = ExperimentConfig(
        model=config, objective=ObjectiveConfig(name=objective), data=DataConfig(seq_len=SEQ_LEN)
    )
    seqlab.save(model, directory, experiment)
    return seqlab.load(directory).eval()


def write_tasks(tmp_path) -> None:
    for name, rows in (("mc", MC), ("docs", [{"text": d} for d in DOCS]), ("gen", GEN)):
        with open(tmp_path / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    common = (
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        "    test: {path}\n"
        f"  cache_dir: {tmp_path / 'hf_cache'}\n"
        "test_split: test\n"
    )
    (tmp_path / "tiny_mc.yaml").write_text(
        "task: tiny_mc\n"
        + common.format(path=tmp_path / "mc.jsonl")
        + "output_type: multiple_choice\n"
        "doc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\n"
        "target_delimiter: ''\n"
        "metric_list:\n  - metric: acc\n"
    )
    (tmp_path / "tiny_ppl.yaml").write_text(
        "task: tiny_ppl\n"
        + common.format(path=tmp_path / "docs.jsonl")
        + "output_type: loglikelihood_rolling\n"
        "doc_to_text: ''\n"
        "doc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n"
    )
    (tmp_path / "tiny_gen.yaml").write_text(
        "task: tiny_gen\n"
        + common.format(path=tmp_path / "gen.jsonl")
        + "output_type: generate_until\n"
        "doc_to_text: '{{prompt}}'\n"
        "doc_to_target: '{{target}}'\n"
        "generation_kwargs:\n"
        "  until: ['e']\n"
        "  max_gen_toks: 6\n"
        "  do_sample: false\n"
        "  temperature: 0.0\n"
        "metric_list:\n  - metric: exact_match\n"
    )


def logprob(model, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """Σ log softmax terms of the continuation, by hand, in float64."""
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logits = model(ids[:, :-1])[0][0].double()
    total, greedy = 0.0, True
    for j, token in enumerate(continuation):
        row = logits[len(context) - 1 + j]
        total += float(row[token] - torch.logsumexp(row, 0))
        greedy &= int(row.argmax()) == token
    return total, greedy


def by_bytes(text: str) -> list[int]:
    return list(text.encode())


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("lm_eval")
    model = save_model(tmp_path / "model")
    write_tasks(tmp_path)
    out = lm_eval.simple_evaluate(
        model="seqlab",
        model_args=f"pretrained={tmp_path / 'model'},device=cpu",
        tasks=["tiny_mc", "tiny_ppl", "tiny_gen"],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
        batch_size=2,
        log_samples=True,
    )
    return model, out


def test_loglikelihood_is_the_sum_of_log_softmax_terms(evaluated):
    model, out = evaluated
    correct = []
    for sample in sorted(out["samples"]["tiny_mc"], key=lambda s: s["doc_id"]):
        doc = MC[sample["doc_id"]]
        context = by_bytes(doc["question"]) or [ord("\n")]
        expected = [logprob(model, context, by_bytes(c)) for c in doc["choices"]]
        got = [tuple(r[0]) for r in sample["resps"]]
        for (value, greedy), (want, want_greedy) in zip(got, expected, strict=True):
            assert value == pytest.approx(want, abs=1e-4)
            assert greedy == want_greedy
        correct.append(max(range(len(expected)), key=lambda i: expected[i][0]) == doc["answer"])
    assert out["results"]["tiny_mc"]["acc,none"] == pytest.approx(sum(correct) / len(MC))


def test_rolling_loglikelihood_chains_windows(evaluated):
    model, out = evaluated
    for sample in out["samples"]["tiny_ppl"]:
        tokens = by_bytes(DOCS[sample["doc_id"]])
        # lm_eval's disjoint windows: chunks of SEQ_LEN tokens, each after the token before
        # it; the last chunk after as many tokens as fill the window
        expected = 0.0
        for start in range(0, len(tokens), SEQ_LEN):
            end = min(start + SEQ_LEN, len(tokens))
            context = tokens[max(end - SEQ_LEN - 1, 0) : start] if start else [ord("\n")]
            expected += logprob(model, context, tokens[start:end])[0]
        assert sample["resps"][0][0] == pytest.approx(expected, abs=1e-3)
    assert len(by_bytes(DOCS[1])) > 2 * SEQ_LEN
    total = sum(s["resps"][0][0] for s in out["samples"]["tiny_ppl"])
    nbytes = sum(len(by_bytes(d)) for d in DOCS)
    bpb = out["results"]["tiny_ppl"]["bits_per_byte,none"]
    assert bpb == pytest.approx(-total / nbytes / math.log(2), rel=1e-6)


def test_generate_until_is_greedy_decoding_cut_at_until(evaluated):
    model, out = evaluated
    for sample in out["samples"]["tiny_gen"]:
        prompt = by_bytes(GEN[sample["doc_id"]]["prompt"])
        ids = seqlab.generate(model, [prompt], max_new_tokens=6).tokens[0, len(prompt) :]
        text = bytes(ids.tolist()).decode(errors="replace").split("e")[0]
        assert sample["resps"][0][0] == text


def test_diffusion_loglikelihood_is_minus_the_objective_bound(tmp_path):
    model = save_model(tmp_path / "model", "masked_diffusion", vocab=257)
    lm = SeqlabLM(pretrained=str(tmp_path / "model"), device="cpu")
    assert lm.sampler.name == "ancestral"
    request = Instance("loglikelihood", {}, ("abc", "de"), 0)
    ((value, _),) = lm.loglikelihood([request])
    objective = build_objective("masked_diffusion", 256)
    tokens = torch.tensor([by_bytes("abcde")])
    mask = torch.tensor([[False, False, False, True, True]])
    torch.manual_seed(0)
    assert value == pytest.approx(-objective.nll(model, Batch(tokens, mask)).nats, rel=1e-6)
    assert value < 0
    (rolling,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("abcdef",), 0)])
    assert math.isfinite(rolling) and rolling < 0
    (text,) = lm.generate_until([Instance("generate_until", {}, ("ab", {"max_gen_toks": 3}), 0)])
    assert isinstance(text, str)


def test_tokenizer_file_and_bad_arguments(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    save_model(tmp_path / "model")
    vocab = {chr(97 + i): i for i in range(26)} | {"\n": 26, "</s>": 27}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="a"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer.save(str(tmp_path / "model" / "tokenizer.json"))
    # the directory's tokenizer.json is read as hf: (its documents end with its eos token)
    lm = SeqlabLM(pretrained=str(tmp_path / "model"), device="cpu")
    assert lm.tokenizer.encode("abz") == [0, 1, 25] and lm.prefix == 27
    byte = SeqlabLM(pretrained=str(tmp_path / "model"), device="cpu", tokenizer="byte")
    assert byte.tokenizer.encode("abz") == [97, 98, 122]
    with pytest.raises(ConfigError, match="batch_size"):
        SeqlabLM(pretrained=str(tmp_path / "model"), device="cpu", batch_size="auto")
    with pytest.raises(ConfigError, match="decodes diffusion"):
        SeqlabLM(pretrained=str(tmp_path / "model"), device="cpu", sampler="ancestral")


def test_command_line(evaluated, tmp_path, capsys, monkeypatch):
    # lm_eval's command line indexes its thousands of built-in tasks first: leave them out
    monkeypatch.setattr(
        lm_eval.tasks, "TaskManager", functools.partial(TaskManager, include_defaults=False)
    )
    write_tasks(tmp_path)
    model_dir = tmp_path / "model"
    save_model(model_dir)
    main(
        [
            "--model",
            "seqlab",
            "--model_args",
            f"pretrained={model_dir}",
            "--device",
            "cpu",
            "--tasks",
            "tiny_mc",
            "--include_path",
            str(tmp_path),
            "--output_path",
            str(tmp_path / "out"),
        ]
    )
    assert "tiny_mc" in capsys.readouterr().out
    (written,) = (tmp_path / "out").rglob("results_*.json")
    got = json.loads(written.read_text())["results"]["tiny_mc"]["acc,none"]
    assert got == evaluated[1]["results"]["tiny_mc"]["acc,none"]


def test_hf_tokenizers_by_name_or_path_and_the_prefix_token(tmp_path, monkeypatch):
    save_model(tmp_path / "model")
    folder = make_tokenizer(tmp_path / "tok", config_eos="<|eod|>")  # drops whitespace
    for name in (f"hf:{folder}", str(folder), str(folder / "tokenizer.json")):
        lm = SeqlabLM(pretrained=str(tmp_path / "model"), device="cpu", tokenizer=name)
        assert isinstance(lm.tokenizer, HFTokenizer) and lm.tokenizer.encode("\n") == []
        assert lm.prefix == lm.tokenizer.eos_id == lm.tokenizer.vocab_size - 1
        assert lm.encode_pair("", "the cat") == ([lm.prefix], lm.tokenizer.encode("the cat"))
    with pytest.raises(DataError, match="tokenizer.json file or a tokenizer folder"):
        SeqlabLM(pretrained=str(tmp_path / "model"), device="cpu", tokenizer=str(tmp_path / "no"))
    monkeypatch.setattr(ByteTokenizer, "encode", lambda self, text: [])
    with pytest.raises(ConfigError, match="newline as no token; pass prefix_token_id="):
        SeqlabLM(pretrained=str(tmp_path / "model"), device="cpu", tokenizer="byte")
    lm = SeqlabLM(pretrained=str(tmp_path / "model"), device="cpu", prefix_token_id=5)
    assert lm.prefix == 5

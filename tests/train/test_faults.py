"""Fault injection: non-finite losses, gradients and weights, loss spikes, and damaged
checkpoints and models. Nothing non-finite reaches the optimizer or the disk, the last good
checkpoint stays, and every failure is one line naming what to do."""

import math
import shutil

import pytest
import torch

import seqlab
from seqlab.cli import main
from seqlab.config import ExperimentConfig, from_dict
from seqlab.errors import CheckpointError, SeqlabError
from seqlab.files import checksum_path, read_checked_json, write_checked_json, write_checksum
from seqlab.train import loop, train
from seqlab.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from tests.helpers import tiny_config, write_config, write_corpus


def config_dict(tmp_path, **train_options):
    corpus = write_corpus(tmp_path / "corpus", files=4, lines=20)
    options = {"steps": 10, "checkpoint_every": 3, "keep_checkpoints": 1, "eval_every": 100}
    return tiny_config(corpus, tmp_path / "cache", train={**options, **train_options})


def config_for(tmp_path, **train_options):
    return from_dict(ExperimentConfig, config_dict(tmp_path, **train_options))


class Faults:
    """Wraps the run's objective and optimizer: injects a fault at training step `at`
    (1-based) and records, for every optimizer step, whether all gradients were finite."""

    def __init__(self, monkeypatch, kind, at, factor=float("nan")):
        self.kind, self.at, self.factor = kind, at, factor
        self.step = 0  # training forward passes so far (one per step: no accumulation)
        self.applied: list[bool] = []
        build_run, build_optimizer = loop.build_run, loop.build_optimizer
        monkeypatch.setattr(loop, "build_run", lambda *a: self.wrap_run(build_run(*a)))
        monkeypatch.setattr(
            loop, "build_optimizer", lambda *a: self.wrap_optimizer(build_optimizer(*a), a[0])
        )

    def wrap_run(self, parts):
        real_loss = parts.objective.loss

        def loss(model, batch):
            value, metrics = real_loss(model, batch)
            if model.training:
                self.step += 1
                if self.kind == "loss" and self.step == self.at:
                    value = value * self.factor
            return value, metrics

        parts.objective.loss = loss
        first = next(parts.model.parameters())
        first.register_hook(
            lambda g: g * self.factor if self.kind == "grad" and self.step == self.at else g
        )
        return parts

    def wrap_optimizer(self, optimizer, model):
        real_step = optimizer.step

        def step(*args, **kwargs):
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            self.applied.append(all(bool(torch.isfinite(g).all()) for g in grads))
            result = real_step(*args, **kwargs)
            if self.kind == "weights" and len(self.applied) == self.at:
                with torch.no_grad():
                    next(model.parameters()).view(-1)[0] = math.inf
            return result

        optimizer.step = step
        return optimizer


def assert_only_good_checkpoint(run, name):
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())
    assert checkpoints == [name]
    assert latest_checkpoint(run).name == name
    checkpoint = load_checkpoint(run / "checkpoints" / name)
    assert all(bool(torch.isfinite(t).all()) for t in checkpoint.model.values())
    assert not (run / "model.safetensors").exists() and not (run / "summary.json").exists()


def test_nan_loss_stops_before_the_optimizer_and_names_step_and_checkpoint(
    tmp_path, monkeypatch, capsys
):
    faults = Faults(monkeypatch, "loss", at=8)
    config = write_config(tmp_path / "c.yaml", config_dict(tmp_path))
    run = tmp_path / "run"
    code = main(["train", "--config", str(config), "--out", str(run)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("seqlab: error:"), err
    assert "step 8" in err[0] and "step-00000006" in err[0] and "loss is nan" in err[0]
    assert faults.applied == [True] * 7
    assert_only_good_checkpoint(run, "step-00000006")

    monkeypatch.undo()  # the fault is gone: resuming finishes as a clean run does
    resumed = train(config_for(tmp_path), run, resume=True, progress=False)
    clean = train(config_for(tmp_path), tmp_path / "clean", progress=False)
    assert resumed["param_fingerprints"] == clean["param_fingerprints"]


@pytest.mark.parametrize("grad_clip", [0.0, 1.0])
def test_nan_gradient_stops_before_the_optimizer(tmp_path, monkeypatch, grad_clip):
    faults = Faults(monkeypatch, "grad", at=5)
    run = tmp_path / "run"
    with pytest.raises(SeqlabError) as caught:
        train(config_for(tmp_path, grad_clip=grad_clip), run, progress=False)
    message = str(caught.value)
    assert "\n" not in message
    assert "step 5" in message and "gradient norm is nan" in message
    assert "step-00000003" in message
    assert faults.applied == [True] * 4
    assert_only_good_checkpoint(run, "step-00000003")


def test_non_finite_weights_are_never_checkpointed(tmp_path, monkeypatch):
    faults = Faults(monkeypatch, "weights", at=6)
    run = tmp_path / "run"
    with pytest.raises(SeqlabError, match="step 6: the weights .* non-finite") as caught:
        train(config_for(tmp_path), run, progress=False)
    assert "step-00000003" in str(caught.value)
    assert len(faults.applied) == 6
    assert_only_good_checkpoint(run, "step-00000003")


def test_divergence_before_any_checkpoint_says_so(tmp_path, monkeypatch):
    Faults(monkeypatch, "loss", at=2)
    with pytest.raises(SeqlabError, match="step 2: .*no checkpoint was written"):
        train(config_for(tmp_path), tmp_path / "run", progress=False)


def test_spike_guard_is_off_by_default_and_stops_a_spike_when_set(tmp_path, monkeypatch):
    faults = Faults(monkeypatch, "loss", at=6, factor=100.0)
    summary = train(config_for(tmp_path), tmp_path / "off", progress=False)
    assert summary["steps"] == 10 and len(faults.applied) == 10

    monkeypatch.undo()
    faults = Faults(monkeypatch, "loss", at=6, factor=100.0)
    with pytest.raises(SeqlabError, match=r"step 6: the loss .* train\.spike_guard") as caught:
        train(config_for(tmp_path, spike_guard=3.0), tmp_path / "on", progress=False)
    assert "step-00000003" in str(caught.value)
    assert faults.applied == [True] * 5
    assert_only_good_checkpoint(tmp_path / "on", "step-00000003")


def test_spike_guard_keeps_a_clean_run_and_its_resume_identical(tmp_path):
    config = config_for(tmp_path, spike_guard=3.0, steps=8)
    guarded = train(config, tmp_path / "guarded", progress=False)
    plain = train(config_for(tmp_path, steps=8), tmp_path / "plain", progress=False)
    assert guarded["param_fingerprints"] == plain["param_fingerprints"]
    # the same run "killed" after its step-4 checkpoint: its later files removed
    run = tmp_path / "resumed"
    killed = config_for(tmp_path, spike_guard=3.0, steps=8, checkpoint_every=4, keep_checkpoints=2)
    train(killed, run, progress=False)
    shutil.rmtree(run / "checkpoints" / "step-00000008")
    (run / "checkpoints" / "latest").write_text("step-00000004\n")
    for name in ("summary.json", "model.safetensors", "model.safetensors.sha256"):
        (run / name).unlink()
    resumed = train(config, run, resume=True, progress=False)
    assert resumed["param_fingerprints"] == guarded["param_fingerprints"]
    final = [
        read_checked_json(latest_checkpoint(tmp_path / run) / "state.json")["extra"]
        for run in ("guarded", "resumed")
    ]
    assert final[0]["running_loss"] > 0
    assert final[1]["running_loss"] == final[0]["running_loss"]


# Damaged checkpoints: each is one line naming the file.


def trained_checkpoint(run, step=5):
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    return save_checkpoint(run, step, model.state_dict(), optimizer.state_dict(), {"seconds": 1})


def one_line_error(call, *fragments):
    with pytest.raises(CheckpointError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_a_corrupted_latest_is_an_error(tmp_path):
    trained_checkpoint(tmp_path)
    (tmp_path / "checkpoints" / "latest").write_bytes(b"\xff\xfe\x00step")
    one_line_error(lambda: latest_checkpoint(tmp_path), "latest", "corrupt")
    (tmp_path / "checkpoints" / "latest").write_text("model.safetensors\n")
    one_line_error(lambda: latest_checkpoint(tmp_path), "not a step-XXXXXXXX")


def test_a_latest_pointing_outside_the_run_is_an_error(tmp_path):
    run = tmp_path / "run"
    trained_checkpoint(run)
    elsewhere = trained_checkpoint(tmp_path / "other", step=7)
    latest = run / "checkpoints" / "latest"
    latest.write_text(f"../../other/checkpoints/{elsewhere.name}\n")
    one_line_error(lambda: latest_checkpoint(run), "not a step-XXXXXXXX")
    latest.write_text(f"{elsewhere}\n")
    one_line_error(lambda: latest_checkpoint(run), "not a step-XXXXXXXX")
    (run / "checkpoints" / elsewhere.name).symlink_to(elsewhere)
    latest.write_text(f"{elsewhere.name}\n")
    one_line_error(lambda: latest_checkpoint(run), "outside")


def test_state_json_carries_its_own_checksum(tmp_path):
    path = trained_checkpoint(tmp_path)
    state_file = path / "state.json"
    original = state_file.read_text()
    state_file.write_text(original.replace('"step": 5', '"step": 6'))
    one_line_error(lambda: load_checkpoint(path), "state.json", "checksum mismatch")
    state_file.write_text(original.replace("self_sha256", "other_field"))
    one_line_error(lambda: load_checkpoint(path), "state.json", "no self_sha256")


@pytest.mark.parametrize("table", [None, {}, {"model.safetensors": ""}])
def test_a_missing_or_empty_checksum_table_is_an_error(tmp_path, table):
    path = trained_checkpoint(tmp_path)
    state = read_checked_json(path / "state.json")
    if table is None:
        del state["sha256"]
    else:
        state["sha256"] = table
    write_checked_json(path / "state.json", state)  # a valid self-checksum over the damage
    one_line_error(lambda: load_checkpoint(path), "state.json", "checksum")


def test_non_finite_weights_are_refused_by_save_checkpoint(tmp_path):
    good = trained_checkpoint(tmp_path, step=5)
    weights = {"w": torch.tensor([1.0, math.nan])}
    one_line_error(
        lambda: save_checkpoint(tmp_path, 10, weights, {"state": {}, "param_groups": []}, {}),
        "step 10",
        "non-finite",
    )
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", good.name]
    assert latest_checkpoint(tmp_path) == good


def test_pruning_never_removes_the_checkpoint_just_written(tmp_path):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    for step in (8, 9, 3):
        save_checkpoint(tmp_path, step, model.state_dict(), optimizer.state_dict(), {}, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
    assert names == ["step-00000003", "step-00000009"]
    assert latest_checkpoint(tmp_path).name == "step-00000003"


# The final model: checksummed, verified by load and eval against summary.json.


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finished")
    run = tmp / "run"
    train(config_for(tmp, steps=3), run, progress=False)
    return run


def copy_run(run, tmp_path):
    return shutil.copytree(run, tmp_path / "copy")


def test_a_tampered_final_model_is_an_error_for_load_and_eval(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    assert seqlab.load(run).num_params() > 0
    data = bytearray((run / "model.safetensors").read_bytes())
    data[-5] ^= 0x01
    (run / "model.safetensors").write_bytes(bytes(data))
    one_line_error(lambda: seqlab.load(run), "model.safetensors", "checksum mismatch")
    assert main(["eval", str(run), "--split", "validation"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checksum mismatch" in err[0]


def test_a_replaced_final_model_fails_the_summary_fingerprint(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    model = seqlab.load(run)
    with torch.no_grad():
        next(model.parameters()).add_(0.5)
    seqlab.save(model, tmp_path / "other")
    shutil.copy(tmp_path / "other" / "model.safetensors", run / "model.safetensors")
    write_checksum(run / "model.safetensors")  # a consistent checksum of the wrong weights
    one_line_error(lambda: seqlab.load(run), "fingerprint in summary.json")


def test_a_missing_model_checksum_is_an_error(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    checksum_path(run / "model.safetensors").unlink()
    one_line_error(lambda: seqlab.load(run), "model.safetensors.sha256", "cannot be verified")


def test_save_refuses_non_finite_weights(tmp_path):
    model = seqlab.build_model(
        from_dict(ExperimentConfig, {"model": {"d_model": 8, "n_layers": 1, "n_heads": 1}}).model
    )
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = math.nan
    one_line_error(lambda: seqlab.save(model, tmp_path / "m"), "non-finite")
    assert not (tmp_path / "m" / "model.safetensors").exists()

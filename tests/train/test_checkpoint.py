import pytest
import torch

from seqlab.errors import CheckpointError
from seqlab.train.checkpoint import (
    flatten_optimizer,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    unflatten_optimizer,
)


def trained_optimizer():
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.9))
    for _ in range(2):
        model(torch.randn(5, 4)).sum().backward()
        optimizer.step()
    return model, optimizer


def test_optimizer_state_round_trips_through_tensors_and_json():
    model, optimizer = trained_optimizer()
    tensors, meta = flatten_optimizer(optimizer.state_dict())
    restored = unflatten_optimizer(tensors, meta)
    again = torch.optim.AdamW(model.parameters(), lr=1.0)
    again.load_state_dict(restored)
    for a, b in zip(
        optimizer.state_dict()["state"].values(), again.state_dict()["state"].values(), strict=True
    ):
        for key in a:
            assert torch.equal(a[key], b[key])
    assert again.param_groups[0]["betas"] == (0.8, 0.9)


def save(run, step, keep=2):
    model, optimizer = trained_optimizer()
    return save_checkpoint(
        run, step, model.state_dict(), optimizer.state_dict(), {"seconds": 1.5}, keep=keep
    )


def test_save_load_and_keep_newest(tmp_path):
    for step in (5, 10, 15):
        save(tmp_path, step)
    assert latest_checkpoint(tmp_path).name == "step-00000015"
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == [
        "step-00000010",
        "step-00000015",
    ]
    checkpoint = load_checkpoint(latest_checkpoint(tmp_path))
    assert checkpoint.step == 15 and checkpoint.extra == {"seconds": 1.5}


def test_no_checkpoint_is_none(tmp_path):
    assert latest_checkpoint(tmp_path) is None


def test_leftover_temporary_directory_is_ignored(tmp_path):
    save(tmp_path, 5)
    (tmp_path / "checkpoints" / "step-00000010.tmp").mkdir()
    assert latest_checkpoint(tmp_path).name == "step-00000005"
    save(tmp_path, 10)
    assert latest_checkpoint(tmp_path).name == "step-00000010"


def test_corrupt_file_is_reported(tmp_path):
    path = save(tmp_path, 5)
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(path)


def test_truncated_file_is_reported(tmp_path):
    path = save(tmp_path, 5)
    data = (path / "optimizer.safetensors").read_bytes()
    (path / "optimizer.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_missing_state_file_is_reported(tmp_path):
    path = save(tmp_path, 5)
    (path / "state.json").unlink()
    with pytest.raises(CheckpointError, match="state.json: file not found"):
        load_checkpoint(path)


def test_latest_pointing_nowhere_is_reported(tmp_path):
    save(tmp_path, 5)
    (tmp_path / "checkpoints" / "latest").write_text("step-00000099\n")
    with pytest.raises(CheckpointError, match="missing"):
        latest_checkpoint(tmp_path)

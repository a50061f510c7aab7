"""Saved models: a directory with `config.yaml` (the model config under `model:`, the same
shape as an experiment config), `model.safetensors` and its checksum
`model.safetensors.sha256`; loading (verified against the checksum and, in a finished run
directory, against the parameter fingerprint in `summary.json`), and starting a model from
another's weights (`train.init_from`)."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from seqlab.config import ExperimentConfig, from_dict, read_config_mapping, save_config
from seqlab.errors import CheckpointError, ConfigError
from seqlab.files import (
    load_tensors,
    non_finite_tensors,
    read_json,
    save_tensors,
    verify_checksum,
    write_checksum,
)
from seqlab.model import Model, build_model

PathLike = str | os.PathLike[str]

WEIGHTS = "model.safetensors"


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters and persistent buffers, tied weights stored once."""
    return {
        name: t
        for name, t in model.state_dict().items()
        if name != "head.weight" or not getattr(model, "tied", False)
    }


def param_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every tensor of the model's state_dict (names and bytes), sorted by name."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def save(
    model: Model,
    directory: PathLike,
    experiment: ExperimentConfig | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write `config.yaml` and `model.safetensors` (+ its `.sha256`) for `model` into
    `directory`.

    `experiment` (a training run's whole config) is written instead of the bare model config
    so that a run directory is also a loadable model directory. A directory that already
    holds a saved model is refused unless `overwrite`; a model with non-finite weights is
    never written (nothing is written then).
    """
    if experiment is not None and experiment.model != model.config:
        raise ConfigError("experiment.model differs from the model's own config")
    directory = Path(directory)
    blocker = next((p for p in (directory, *directory.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise CheckpointError(
            f"cannot save a model into {directory}: {blocker} is an existing file, not a directory"
        )
    if (directory / WEIGHTS).exists() and not overwrite:
        raise CheckpointError(
            f"{directory} already holds a saved model; pass overwrite=True to replace it"
        )
    weights = model_state(model)
    bad = non_finite_tensors(weights)
    if bad:
        raise CheckpointError(f"{directory}: not saved, {bad[0]} holds non-finite values")
    directory.mkdir(parents=True, exist_ok=True)
    save_config(experiment or ExperimentConfig(model=model.config), directory / "config.yaml")
    save_tensors(weights, directory / WEIGHTS, {"format": "seqlab"})
    write_checksum(directory / WEIGHTS)
    return directory


def read_weights(directory: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of `directory/model.safetensors`, verified against its checksum."""
    weights = load_tensors(directory / WEIGHTS, device)
    verify_checksum(directory / WEIGHTS)
    return weights


def verify_fingerprint(model: Model, directory: Path) -> None:
    """In a finished run directory, the loaded weights are those the run's `summary.json`
    fingerprinted when it ended."""
    summary_path = directory / "summary.json"
    if not summary_path.is_file():
        return
    summary = read_json(summary_path)
    fingerprints = summary.get("param_fingerprints") if isinstance(summary, dict) else None
    if fingerprints and param_fingerprint(model) != fingerprints[0]:
        raise CheckpointError(
            f"{directory / WEIGHTS}: the weights differ from the fingerprint in summary.json "
            "(replaced after the run ended, or the run was interrupted while saving: resume it)"
        )


def load(directory: PathLike, device: str | torch.device = "cpu") -> Model:
    """Rebuild a model saved by `save` (or a training run directory) with its weights."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such model directory")
    config_path = directory / "config.yaml"
    if not config_path.is_file():
        raise CheckpointError(f"{directory}: missing config.yaml")
    try:
        config = from_dict(ExperimentConfig, read_config_mapping(config_path))
    except ConfigError as err:
        raise CheckpointError(f"{config_path}: {err}") from None
    weights = read_weights(directory, device)
    model = build_model(config.model).to(device)
    load_model_state(model, weights, directory / WEIGHTS)
    verify_fingerprint(model, directory)
    return model


def _check_names(expected: dict[str, Any], weights: dict[str, Any], problem: str) -> None:
    """Raise `problem` naming the tensors one side has and the other lacks."""
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{problem} (missing: {missing[:5]}, unexpected: {unexpected[:5]})")


def load_model_state(model: Model, weights: dict[str, torch.Tensor], source: PathLike) -> None:
    """Copy `weights` into `model`, naming any missing, unexpected or misshapen tensor. A
    model whose buffers are sized by its data (a baseline's count tables) takes the saved
    shapes first (`resize_to`)."""
    if hasattr(model, "resize_to"):
        model.resize_to(weights)
    expected = model_state(model)
    _check_names(expected, weights, f"{source}: weights do not match the config")
    for name, tensor in expected.items():
        if tensor.shape != weights[name].shape:
            raise CheckpointError(
                f"{source}: {name} has shape {tuple(weights[name].shape)}, the config needs "
                f"{tuple(tensor.shape)}"
            )
    model.load_state_dict(weights, strict=False)


VOCABULARY_ROWS = ("embed.weight", "head.weight")
# the value head's standardisation: the new run's own (config.yaml's, from its task's data)
STANDARDISATION = ("value_head.shift", "value_head.scale")


def initialize_from(model: Model, directory: PathLike) -> None:
    """Start `model` from the weights of a saved model or run directory (`train.init_from`).

    Every tensor must match in name and shape, except the token embedding and output head,
    whose vocabulary rows may differ: the shared rows are copied and the others keep their
    fresh initialisation. That is how a diffusion model with an extra mask token starts
    from an autoregressive model over the same data vocabulary (Fast-dLLM v2, SDAR).

    A value head keeps its own `shift` and `scale` (those its config, and so the run's
    config.yaml, names: the new task's standardisation); where the source's differ, a warning
    names both (set model.value_head_options shift and scale to keep the source's).
    """
    directory = Path(directory)
    if not (directory / WEIGHTS).is_file():
        raise CheckpointError(f"{directory}: no {WEIGHTS} to initialise from")
    source = read_weights(directory)
    expected = model_state(model)
    _check_names(expected, source, f"{directory}: its model has another architecture")
    with torch.no_grad():
        for name, tensor in expected.items():
            weights = source[name]
            if name in STANDARDISATION:
                if not torch.equal(weights.to(tensor), tensor):
                    warnings.warn(
                        f"{directory}: {name} is {float(weights):g} there and {float(tensor):g} "
                        f"here (this run's model.value_head_options); this model keeps "
                        f"{float(tensor):g}",
                        stacklevel=2,
                    )
            elif name in VOCABULARY_ROWS and weights.shape[1:] == tensor.shape[1:]:
                rows = min(weights.shape[0], tensor.shape[0])
                tensor[:rows].copy_(weights[:rows])
            elif weights.shape == tensor.shape:
                tensor.copy_(weights)
            else:
                raise CheckpointError(
                    f"{directory}: {name} has shape {tuple(weights.shape)}, this model needs "
                    f"{tuple(tensor.shape)}"
                )

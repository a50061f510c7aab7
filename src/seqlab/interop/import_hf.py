"""A local Hugging Face model directory in as a seqlab model (`seqlab import-hf`).

`import_hf(hf_dir, out)` reads `hf_dir/config.json`'s `model_type`: "seqlab" (a folder
`export_hf` wrote) comes back as the seqlab model and experiment config it carries; any
other type goes to the family of `seqlab.interop.families.families()` whose `model_types`
holds it (`Family.from_hf` of the model `AutoModelForCausalLM` loads in float32); a type no
family takes is a ConfigError naming the supported ones. `out` (which must not exist, or be
an empty folder) becomes a seqlab model directory (`seqlab.io.save`: config.yaml +
model.safetensors) with the tokenizer files copied in, and the config's `data.tokenizer` set
to `hf:<hf_dir>` (the run's own copy is read first), so `seqlab sample`, `seqlab eval` and
every decoder run on it. A seqlab export keeps the tokenizer setting it was trained with.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from seqlab.config import ExperimentConfig, ModelConfig
from seqlab.data.tokenizers import HF_PREFIX, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE
from seqlab.errors import CheckpointError, ConfigError
from seqlab.files import read_json
from seqlab.interop.export import SEQLAB_FORMAT, refuse_existing, write_new_directory
from seqlab.interop.families import families
from seqlab.interop.hf_model import SeqlabForCausalLM
from seqlab.io import load_model_state, save
from seqlab.model import Model, build_model

PathLike = str | os.PathLike[str]
# the files of a Hugging Face tokenizer, copied into the imported model's directory
TOKENIZER_FILES = (
    TOKENIZER_FILE,
    TOKENIZER_CONFIG_FILE,
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)


def model_type(hf_dir: Path) -> str:
    """`config.json`'s model_type."""
    path = hf_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{hf_dir}: not a Hugging Face model directory (no config.json)")
    config = read_json(path)
    kind = config.get("model_type") if isinstance(config, dict) else None
    if not isinstance(kind, str):
        raise CheckpointError(f"{path}: no model_type")
    return kind


def supported_types() -> list[str]:
    """Every model_type `import_hf` reads."""
    return [SEQLAB_FORMAT, *(t for f in families().values() for t in f.model_types)]


def import_hf(hf_dir: PathLike, out: PathLike) -> str:
    """Import the Hugging Face model of `hf_dir` into the new seqlab model directory `out`;
    returns the model_type read."""
    hf_dir, out = Path(hf_dir), Path(out)
    refuse_existing(out)
    kind = model_type(hf_dir)
    if kind == SEQLAB_FORMAT:
        wrapper = _read(SeqlabForCausalLM, hf_dir)
        model, experiment = wrapper.model, wrapper.config.experiment()
    else:
        family = next((f for f in families().values() if kind in f.model_types), None)
        if family is None:
            raise ConfigError(
                f"{hf_dir}: model_type {kind!r} cannot be imported; supported model types: "
                + ", ".join(supported_types())
            )
        hf_model = _read(AutoModelForCausalLM, hf_dir)
        config, weights = family.from_hf(hf_model)
        model = model_from(config, weights, hf_dir)
        experiment = ExperimentConfig(model=config)
        if any((hf_dir / name).is_file() for name in TOKENIZER_FILES):
            data = dataclasses.replace(experiment.data, tokenizer=f"{HF_PREFIX}{hf_dir.resolve()}")
            experiment = dataclasses.replace(experiment, data=data)

    def write(tmp: Path) -> None:
        save(model, tmp, experiment)
        if experiment.data.tokenizer != "byte":
            for name in TOKENIZER_FILES:
                if (hf_dir / name).is_file():
                    shutil.copyfile(hf_dir / name, tmp / name)

    write_new_directory(out, write)
    return kind


def _read(model_class: Any, hf_dir: Path) -> Any:
    """`model_class.from_pretrained(hf_dir)` in float32 from local files; a folder it cannot
    read (no weights, a broken file) is a CheckpointError naming it."""
    try:
        return model_class.from_pretrained(hf_dir, dtype=torch.float32, local_files_only=True)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{hf_dir}: cannot read the Hugging Face model: {first}") from None


def model_from(config: ModelConfig, weights: dict[str, torch.Tensor], source: Path) -> Model:
    """A seqlab model of `config` holding `weights` (every tensor named and shaped; a tied
    model's head, which a `Model.state_dict()` repeats, must equal its embedding)."""
    model = build_model(config)
    if getattr(model, "tied", False) and "head.weight" in weights:
        weights = dict(weights)
        head = weights.pop("head.weight")
        if not torch.equal(head, weights.get("embed.weight", head)):
            raise CheckpointError(f"{source}: tied embeddings, but the head differs from them")
    load_model_state(model, weights, source)
    return model.eval()

"""A seqlab run or saved model out as a Hugging Face model directory (`seqlab export`).

`export_hf(model_dir, out, format=...)` writes `config.json`, `model.safetensors` (through
`save_pretrained`) and the tokenizer into `out`, a directory that must not exist yet (an
empty one is taken): nothing already written is ever overwritten, and a model with a NaN or
infinite weight is refused (CheckpointError) before anything is written. The model goes out as
the first family of `seqlab.interop.families.families()` that takes it exactly
(`format="auto"`), a family named by `format`, or `SeqlabForCausalLM` (`format="seqlab"`; also
the fallback of "auto"), which carries the run's whole config and a `modeling_seqlab.py` shim
named by `auto_map` (see `seqlab.interop.hf_model`). The families are causal LMs: only a run
whose objective reads sequences causally (`objective_layout`: ar, mtp, any_order, ...) goes
out as one; diffusion and insertion models go out as `SeqlabForCausalLM`.

The tokenizer of a text run goes out as `tokenizer.json` + `tokenizer_config.json`
(`PreTrainedTokenizerFast`, so `AutoTokenizer.from_pretrained(out)` reads it): a BPE or
`hf:` tokenizer's own `tokenizer.json`, copied byte for byte; the byte tokenizer as a
byte-level BPE without merges whose token i is byte i (GPT-2's byte-to-character map), so
Hugging Face encodes text to the same UTF-8 byte ids. Runs of other tasks (synthetic token
tasks) have no tokenizer and export none (`has_tokenizer`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from seqlab.config import ExperimentConfig, load_config
from seqlab.data.tokenizers import (
    HF_PREFIX,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    HFTokenizer,
    load_tokenizer,
)
from seqlab.errors import CheckpointError, ConfigError, UnknownNameError
from seqlab.files import atomic_write_json, non_finite_tensors
from seqlab.interop.families import Family, families
from seqlab.interop.hf_model import AUTO_MAP, SeqlabForCausalLM, objective_layout, write_shim
from seqlab.io import load, model_state
from seqlab.layout import LayoutKind
from seqlab.model import Model

PathLike = str | os.PathLike[str]
SEQLAB_FORMAT = "seqlab"


def export_hf(model_dir: PathLike, out: PathLike, *, format: str = "auto") -> str:
    """Export the model of `model_dir` to the new Hugging Face directory `out`; returns the
    format written ("seqlab" or a family name). `format`: "auto", "seqlab" or a family."""
    model_dir, out = Path(model_dir), Path(out)
    refuse_existing(out)
    experiment = read_experiment(model_dir)
    model = load(model_dir)
    bad = non_finite_tensors(model_state(model))
    if bad:
        raise CheckpointError(f"{model_dir}: not exported, {bad[0]} holds non-finite values")
    family = choose_family(experiment, model, format)
    if family is None:
        hf_model = SeqlabForCausalLM.from_seqlab(model, experiment)
        hf_model.config.auto_map = dict(AUTO_MAP)
    else:
        hf_model = family.to_hf(model)

    def write(tmp: Path) -> None:
        hf_model.save_pretrained(tmp)
        if family is None:
            write_shim(tmp)
        if has_tokenizer(experiment):
            write_tokenizer(experiment, model_dir, tmp)

    write_new_directory(out, write)
    return SEQLAB_FORMAT if family is None else family.name


def read_experiment(model_dir: Path) -> ExperimentConfig:
    """The experiment config of a run or saved-model directory."""
    path = model_dir / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{model_dir}: not a run or model directory (no config.yaml)")
    try:
        return load_config(path)
    except ConfigError as err:
        raise CheckpointError(f"{path}: {err}") from None


def choose_family(experiment: ExperimentConfig, model: Model, format: str) -> Family | None:
    """The family `format` asks for (None: SeqlabForCausalLM). "auto" takes the first family
    that exports the model exactly; a named family that cannot is a ConfigError saying why.
    The families are causal LMs: a run whose objective reads its sequences in another layout
    (a diffusion or insertion model) goes out as SeqlabForCausalLM only."""
    every = families()
    if format == SEQLAB_FORMAT:
        return None
    if format not in every and format != "auto":
        raise UnknownNameError("export format", format, ("auto", SEQLAB_FORMAT, *every))
    causal = objective_layout(experiment, model).kind == LayoutKind.CAUSAL
    if format == "auto":
        exact = (f for f in every.values() if f.export_reason(experiment.model) is None)
        return next(exact, None) if causal else None
    reason = every[format].export_reason(experiment.model)
    if not causal:
        reason = (
            f"objective {experiment.objective.name} does not read sequences causally "
            f"(the {format} family is a causal LM)"
        )
    if reason is not None:
        raise ConfigError(
            f"this model cannot be exported as {format}: {reason}; use --as seqlab (or auto)"
        )
    return every[format]


def refuse_existing(out: Path) -> None:
    """Nothing already written is overwritten: `out` must not exist (or be an empty folder)."""
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise CheckpointError(f"{out} already exists; choose a new output directory")


def write_new_directory(out: Path, write: Any) -> None:
    """Run `write(tmp)` on a fresh temporary folder beside `out`, then move it to `out`, so
    `out` appears complete or not at all."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        refuse_existing(out)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def byte_tokenizer() -> Any:
    """seqlab's byte tokenizer as a `tokenizers.Tokenizer`: byte-level BPE with no merges,
    token id b the character GPT-2's byte-level map gives byte b."""
    import tokenizers

    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    vocab = {chars[b]: b for b in range(256)}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE(vocab, []))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(
        add_prefix_space=False, use_regex=False
    )
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    return tokenizer


def has_tokenizer(experiment: ExperimentConfig) -> bool:
    """Whether the run reads text through its tokenizer (the text task; a byte tokenizer
    only where the model's vocabulary holds the 256 bytes)."""
    byte_fits = experiment.data.tokenizer != "byte" or experiment.model.vocab_size >= 256
    return experiment.task.name == "text" and byte_fits


def write_tokenizer(experiment: ExperimentConfig, model_dir: Path, out: Path) -> str | None:
    """Write the run's tokenizer as tokenizer.json + tokenizer_config.json; returns its
    end-of-sequence token (None for byte and BPE, which have none)."""
    name = experiment.data.tokenizer
    eos = None
    if name == "byte":
        byte_tokenizer().save(str(out / TOKENIZER_FILE))
    else:
        tokenizer = load_tokenizer(name, model_dir)
        source = model_dir / TOKENIZER_FILE
        if source.is_file():
            shutil.copyfile(source, out / TOKENIZER_FILE)
        else:  # an hf: run saved before its copy: write the tokenizer it reads
            tokenizer.save(out)
        if name.startswith(HF_PREFIX) and isinstance(tokenizer, HFTokenizer):
            eos = tokenizer.eos_token
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos}
    atomic_write_json(out / TOKENIZER_CONFIG_FILE, config)
    return eos

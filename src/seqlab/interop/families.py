"""Hugging Face architecture families that a seqlab model maps onto exactly.

A `Family` converts in both directions between a seqlab model and one family of
`transformers` models (Llama/Mistral/Qwen2, Mamba, Mamba2): `export_reason` says why a
seqlab config cannot be exported to it exactly (None: it can), `to_hf` builds the
Hugging Face model with the same function (logits equal in float32), `from_hf` reads a
Hugging Face model into a seqlab `ModelConfig` and a `Model.state_dict()`. Every family
module registers its `Family` at import; `families()` imports the modules listed in
`FAMILY_MODULES` (lazily, as they import `transformers`). A seqlab model that no family
takes is exported as `SeqlabForCausalLM` (`seqlab.interop.hf_model`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from seqlab.config import ModelConfig

if TYPE_CHECKING:
    import torch

    from seqlab.model import Model

FAMILY_MODULES = ("seqlab.interop.llama", "seqlab.interop.mamba")


@dataclass(frozen=True)
class Family:
    """One Hugging Face architecture family.

    name: what `seqlab export --format` and messages call it ("llama", "mamba", "mamba2")
    model_types: the `config.model_type` values of Hugging Face checkpoints it imports
    export_reason(model_config): None when the model exports exactly, else why not (one line)
    to_hf(model): the `transformers.PreTrainedModel` computing the same logits
    from_hf(hf_model): (the seqlab ModelConfig, the seqlab Model state_dict) of it
    """

    name: str
    model_types: tuple[str, ...]
    export_reason: Callable[[ModelConfig], str | None]
    to_hf: Callable[[Model], Any]
    from_hf: Callable[[Any], tuple[ModelConfig, dict[str, torch.Tensor]]]


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    _FAMILIES[family.name] = family
    return family


def families() -> dict[str, Family]:
    """Every family, by name (importing the family modules on first use)."""
    for module in FAMILY_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
    return dict(_FAMILIES)

"""Any seqlab model as a Hugging Face causal LM: `SeqlabConfig` and `SeqlabForCausalLM`.

`SeqlabConfig` (model_type "seqlab") carries the seqlab experiment config as a plain dict
(`config.seqlab`, the shape of a run's config.yaml) beside the few standard fields
(`vocab_size`, `hidden_size`, `num_hidden_layers`, `tie_word_embeddings`) that Hugging Face
tools read. `SeqlabForCausalLM` wraps the seqlab `Model` that config builds (any mixer, any
hybrid `model.layers`, a DEQ, any paradigm) as `self.model`; its forward returns the model's
logits, in the layout of the run's objective (causal for ar, mtp and any_order;
bidirectional for masked, uniform and insertion models; `layout=` overrides it).

Loading in a fresh process. Importing this module registers both classes with `AutoConfig`
and `AutoModelForCausalLM`, so after `import seqlab.interop.hf_model`,
`AutoModelForCausalLM.from_pretrained(OUT)` loads an export. An exported folder also holds
`modeling_seqlab.py`, a two-line shim that imports these classes from the installed seqlab,
named by `auto_map` in config.json: `AutoModelForCausalLM.from_pretrained(OUT,
trust_remote_code=True)` then works in a process that never imported seqlab (the code it
runs is the installed package's, not the folder's). Registering at `import seqlab` would
import `transformers` with every seqlab command; it is not done.

Generation. `generate` (greedy, sampling, beam search) runs on seqlab's own decode state, the
value `model(x, state)` returns: `SeqlabState` holds it with the number of tokens it has
read, is returned as the output's `cache` and passed back, so each step feeds only the new
token (one prefill of the prompt, then one token per step, as seqlab's own samplers do).
The model declares no support for `transformers`' `DynamicCache`, so `generate` never builds
one. Prompts must share their length: seqlab models read no padding mask, and an
`attention_mask` with a zero is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from torch import Tensor
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from seqlab.config import ExperimentConfig, from_dict, to_dict
from seqlab.errors import ConfigError, ShapeError
from seqlab.layout import Layout, LayoutKind
from seqlab.model import Model, ModelState, build_model
from seqlab.registry import OBJECTIVES
from seqlab.state import reorder_state

MODEL_TYPE = "seqlab"
SHIM_FILE = "modeling_seqlab.py"
SHIM = (
    '"""Loads a seqlab export through the installed seqlab package (pip install seqlab)."""\n\n'
    "from seqlab.interop.hf_model import SeqlabConfig, SeqlabForCausalLM\n\n"
    '__all__ = ["SeqlabConfig", "SeqlabForCausalLM"]\n'
)
AUTO_MAP = {
    "AutoConfig": f"{SHIM_FILE[:-3]}.SeqlabConfig",
    "AutoModelForCausalLM": f"{SHIM_FILE[:-3]}.SeqlabForCausalLM",
}


@strict
class SeqlabConfig(PretrainedConfig):
    """A seqlab experiment config (`seqlab`: the plain dict of config.yaml) as a
    `transformers` config; the standard fields mirror its model section."""

    model_type = MODEL_TYPE

    seqlab: dict | None = None
    vocab_size: int = 256
    hidden_size: int = 128
    num_hidden_layers: int = 2
    tie_word_embeddings: bool = True

    @classmethod
    def from_experiment(cls, experiment: ExperimentConfig, **kwargs: Any) -> SeqlabConfig:
        """The config of a seqlab experiment (its model section fills the standard fields)."""
        model = experiment.model
        return cls(
            seqlab=to_dict(experiment),
            vocab_size=model.vocab_size,
            hidden_size=model.d_model,
            num_hidden_layers=len(model.layer_names()),
            tie_word_embeddings=model.tie_embeddings,
            **kwargs,
        )

    def experiment(self) -> ExperimentConfig:
        """The seqlab ExperimentConfig this config carries."""
        return from_dict(ExperimentConfig, dict(self.seqlab or {}))


class SeqlabState:
    """seqlab's decode state (`Model.forward`'s returned value) as `generate`'s cache: the
    state and the number of tokens it has read."""

    def __init__(self, state: ModelState, seen: int) -> None:
        self.state, self.seen = state, seen

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    def reorder_cache(self, beam_idx: Tensor) -> None:
        """Beam search: keep the rows `beam_idx` names, in that order."""
        self.state = reorder_state(self.state, beam_idx)


def objective_layout(experiment: ExperimentConfig, model: Model) -> Layout:
    """The layout the run's objective reads a plain sequence in: its class-level layout when
    that is causal or bidirectional and the model supports it, else causal."""
    layout = getattr(OBJECTIVES.get(experiment.objective.name).target, "layout", None)
    plain = (LayoutKind.CAUSAL, LayoutKind.BIDIRECTIONAL)
    if isinstance(layout, Layout) and layout.kind in plain and layout.kind in model.layouts:
        return layout
    return Layout.CAUSAL if LayoutKind.CAUSAL in model.layouts else Layout.BIDIRECTIONAL


class SeqlabForCausalLM(PreTrainedModel, GenerationMixin):
    """A seqlab `Model` (`self.model`) behind the `transformers` causal-LM interface."""

    config_class = SeqlabConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]

    def __init__(self, config: SeqlabConfig, model: Model | None = None) -> None:
        super().__init__(config)
        experiment = config.experiment()
        if experiment.model.value_head is not None:
            raise ConfigError(
                "a value head (model.value_head) has no SeqlabForCausalLM counterpart (its "
                "forward passes no values)"
            )
        self.model = model if model is not None else build_model(experiment.model)
        if self.model.tied:
            self._tied_weights_keys = {"model.head.weight": "model.embed.weight"}
        self.layout = objective_layout(experiment, self.model)
        self.post_init()

    @classmethod
    def from_seqlab(
        cls, model: Model, experiment: ExperimentConfig | None = None
    ) -> SeqlabForCausalLM:
        """Wrap a built seqlab model (its weights shared, not copied)."""
        experiment = experiment or ExperimentConfig(model=model.config)
        if experiment.model != model.config:
            raise ConfigError("experiment.model differs from the model's own config")
        return cls(SeqlabConfig.from_experiment(experiment), model=model)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False

    @classmethod
    def get_init_context(cls, *args: Any, **kwargs: Any) -> list:
        # seqlab modules initialise themselves when built (some read tensor values while
        # constructed), so the model is built on its real device, never on "meta"
        contexts = super().get_init_context(*args, **kwargs)
        return [c for c in contexts if not isinstance(c, torch.device)]

    def _move_missing_keys_from_meta_to_device(self, *args: Any, **kwargs: Any) -> None:
        """Nothing is on "meta" (see `get_init_context`): buffers keep their built values."""

    def _init_weights(self, module: torch.nn.Module) -> None:
        """seqlab's `Model.init_weights` already initialised every weight when built."""

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.model.embed

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.model.head

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        cache: SeqlabState | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        layout: Layout | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple:
        """Logits `[B, T, vocab]` of seqlab's model; with `use_cache`, the decode state after
        `input_ids` (continued from `cache`, which then must be followed by new tokens only)
        as `cache`; with `labels`, the mean next-token cross-entropy (-100 ignored)."""
        if input_ids is None:
            raise ShapeError("SeqlabForCausalLM needs input_ids (it takes no inputs_embeds)")
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ShapeError(
                "seqlab models read no padding mask: generate from prompts of one length "
                "(one call per length), without padding"
            )
        use_cache = bool(use_cache) or cache is not None
        state = None
        if use_cache:
            if cache is None:
                cache = SeqlabState(self.model.init_state(input_ids.shape[0]), 0)
            state = cache.state
        logits, state = self.model(input_ids, state, layout=layout or self.layout)
        new_cache = SeqlabState(state, cache.seen + input_ids.shape[1]) if use_cache else None
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
            )
        if return_dict is False:
            return tuple(v for v in (loss, logits, new_cache) if v is not None)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=new_cache)

    def prepare_inputs_for_generation(
        self,
        input_ids: Tensor,
        next_sequence_length: int | None = None,
        cache: SeqlabState | None = None,
        attention_mask: Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Only the tokens the state has not read yet (all of them at the first step)."""
        if cache is not None:
            input_ids = input_ids[:, cache.seen :]
        return {
            "input_ids": input_ids,
            "cache": cache,
            "attention_mask": attention_mask,
            "use_cache": use_cache if use_cache is not None else True,
        }


def write_shim(directory: str | Path) -> None:
    """Write `modeling_seqlab.py`, the module `auto_map` names (see the module docstring)."""
    (Path(directory) / SHIM_FILE).write_text(SHIM, encoding="utf-8")


AutoConfig.register(MODEL_TYPE, SeqlabConfig, exist_ok=True)
AutoModelForCausalLM.register(SeqlabConfig, SeqlabForCausalLM, exist_ok=True)

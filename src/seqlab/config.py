"""Plain dataclass configs, YAML load/save, dotted overrides and validation with clear messages."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from seqlab.errors import ConfigError
from seqlab.files import atomic_write_text
from seqlab.ops.ring_attention import MODES as SEQUENCE_PARALLEL_ATTENTION

# The most blocks a model may have: deeper stacks are far outside what this library trains, and
# a typo (an extra zero or three) would otherwise be found only when memory runs out.
MAX_LAYERS = 1024


def require(checks: list[tuple[bool, str]]) -> None:
    """Raise ConfigError with the message of the first check that does not hold."""
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def _non_negative(value: float) -> bool:
    return math.isfinite(value) and value >= 0


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a config dataclass's fields."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def check_field_types(config: Any) -> None:
    """Check every field of a config section against its annotation (converting lossless
    cases such as int -> float), so that the Python API refuses what a YAML file would."""
    for name, tp in _hints(type(config)).items():
        value = getattr(config, name)
        if dataclasses.is_dataclass(tp):
            continue
        setattr(config, name, _coerce(value, tp, f"{config.section}.{name}"))


MLP_KINDS = ("swiglu", "moe")


@dataclass
class MoEConfig:
    """The options of a mixture-of-experts feed-forward, `model.mlp` with `kind: moe`.

    Keys:
        experts: moe: routed SwiGLU experts
        top_k: moe: routed experts per token (gates renormalised over them when > 1)
        shared: moe: experts every token passes through, added unweighted (DeepSeekMoE)
        expert_ratio: moe: hidden width of each expert / d_model (null: mlp_ratio / (top_k +
            shared), so the active width equals the dense SwiGLU's, as DeepSeekMoE)
        balance_weight: moe: coefficient of the load-balancing loss E · Σ_e f_e P_e (0: off)
    """

    experts: int = 8
    top_k: int = 2
    shared: int = 0
    expert_ratio: float | None = None
    balance_weight: float = 0.01

    section: ClassVar[str] = "model.mlp"

    def __post_init__(self) -> None:
        check_field_types(self)
        require(
            [
                (self.experts >= 1, f"model.mlp.experts must be >= 1, got {self.experts}"),
                (
                    1 <= self.top_k <= self.experts,
                    f"model.mlp.top_k must lie in [1, experts = {self.experts}], got {self.top_k}",
                ),
                (self.shared >= 0, f"model.mlp.shared must be >= 0, got {self.shared}"),
                (
                    self.expert_ratio is None or _positive(self.expert_ratio),
                    f"model.mlp.expert_ratio must be finite and > 0 (or null), got "
                    f"{self.expert_ratio}",
                ),
                (
                    _non_negative(self.balance_weight),
                    f"model.mlp.balance_weight must be finite and >= 0, got {self.balance_weight}",
                ),
            ]
        )


DEQ_SOLVERS = ("anderson", "broyden", "fixed_point")
DEQ_BACKWARDS = ("implicit", "phantom", "unrolled")


@dataclass
class DEQConfig:
    """The options of a deep equilibrium model, `model.deq` (null: an ordinary block stack).

    Keys:
        layers: the Blocks, one mixer each, of the one weight-tied layer f whose fixed point
            is the hidden state (null: model.layers, or model.mixer x n_layers)
        solver: anderson, broyden or fixed_point
        max_iter: most evaluations of f in the forward solve
        tol: forward relative residual ‖f(z) − z‖ / ‖f(z)‖ per sample to stop at
        memory: iterates Anderson mixes / rank-one updates Broyden keeps
        backward: implicit (adjoint fixed point, memory of one f), phantom (phantom_steps
            damped steps from z*) or unrolled (backpropagate through max_iter plain
            iterations; memory grows with them: a reference)
        backward_max_iter: implicit: most vector-Jacobian products of the adjoint solve
        backward_tol: implicit: relative residual of the adjoint solve to stop at
        phantom_steps: phantom: damped steps z <- λ f(z) + (1 − λ) z run with autograd
        phantom_damping: phantom: λ in (0, 1]
        jacobian_penalty: γ of the Jacobian regulariser γ ‖J_f(z*)‖_F² / (B·T·D) added to the
            training loss (Bai, Koltun & Kolter, 2021; one Hutchinson probe per step), which
            keeps the equilibrium well-conditioned as training goes on (implicit and
            phantom backward; 0: off)
    """

    layers: list[str] | None = None
    solver: str = "anderson"
    max_iter: int = 30
    tol: float = 1e-3
    memory: int = 5
    backward: str = "implicit"
    backward_max_iter: int = 30
    backward_tol: float = 1e-3
    phantom_steps: int = 5
    phantom_damping: float = 0.8
    jacobian_penalty: float = 0.0

    section: ClassVar[str] = "model.deq"

    def __post_init__(self) -> None:
        check_field_types(self)
        require(
            [
                (
                    self.layers is None
                    or (bool(self.layers) and all(n.strip() for n in self.layers)),
                    f"model.deq.layers must name at least one mixer (or be null), got "
                    f"{self.layers}",
                ),
                (
                    self.solver in DEQ_SOLVERS,
                    f"model.deq.solver must be one of {', '.join(DEQ_SOLVERS)}, got "
                    f"{self.solver!r}",
                ),
                (
                    self.backward in DEQ_BACKWARDS,
                    f"model.deq.backward must be one of {', '.join(DEQ_BACKWARDS)}, got "
                    f"{self.backward!r}",
                ),
                (self.max_iter >= 1, f"model.deq.max_iter must be >= 1, got {self.max_iter}"),
                (
                    self.backward_max_iter >= 1,
                    f"model.deq.backward_max_iter must be >= 1, got {self.backward_max_iter}",
                ),
                (_non_negative(self.tol), f"model.deq.tol must be finite and >= 0, got {self.tol}"),
                (
                    _non_negative(self.backward_tol),
                    f"model.deq.backward_tol must be finite and >= 0, got {self.backward_tol}",
                ),
                (self.memory >= 1, f"model.deq.memory must be >= 1, got {self.memory}"),
                (
                    self.phantom_steps >= 1,
                    f"model.deq.phantom_steps must be >= 1, got {self.phantom_steps}",
                ),
                (
                    0 < self.phantom_damping <= 1,
                    f"model.deq.phantom_damping must lie in (0, 1], got {self.phantom_damping}",
                ),
                (
                    _non_negative(self.jacobian_penalty),
                    f"model.deq.jacobian_penalty must be finite and >= 0, got "
                    f"{self.jacobian_penalty}",
                ),
            ]
        )


@dataclass
class ModelConfig:
    """The backbone: embed -> [Block(mixer, mlp)] x n_layers -> norm -> head.

    Keys:
        mixer: the token mixer of every layer: a name (`seqlab list mixers`) or an import
            path package.module:Name
        layers: one mixer per layer, e.g. [gla, gla, attention] (a hybrid); fixes n_layers
        d_model: residual stream width
        n_layers: number of blocks (at most 1024)
        n_heads: attention heads (and the default `heads` option of multi-head mixers)
        n_kv_heads: key/value heads of attention (grouped-query attention; null: n_heads)
        vocab_size: token vocabulary (set from the task when training)
        mlp_ratio: SwiGLU hidden width / d_model (0: no MLP)
        mlp: the feed-forward: {kind: swiglu} (hidden width mlp_ratio · d_model) or {kind:
            moe, ...}, top-k routed SwiGLU experts with the model.mlp.* keys below
        tie_embeddings: share the input embedding and the output head
        norm_eps: RMSNorm epsilon
        rope_theta: rotary base of attention (and of retnet's rotary)
        window: sliding-window length of attention (null: full causal attention)
        init_std: std of the normal init (output projections scaled by 1/sqrt(2 n_layers))
        mixer_options: mixer name -> its options (`seqlab list mixers -v`)
        deq: null, or a deep equilibrium model: the blocks become one weight-tied layer f
            and the hidden state its fixed point z* = f(z*, x), with the model.deq.* keys
            below (`seqlab.implicit`)
        baseline: null, or a classical baseline (`seqlab list baselines`: ngram, hmm,
            popularity, cooccurrence) fitted in closed form or by EM instead of the neural
            model; the other model keys are then ignored (objective: ar only)
        baseline_options: the baseline's options (`seqlab list baselines -v`)
        value_head: null, or a continuous value beside every token, read as an input and
            predicted as a distribution (`seqlab list value_heads`: lognormal_mixture,
            gaussian, student_t); null takes the task's (`events`: lognormal_mixture)
        value_head_options: the value head's options (needs model.value_head), over the
            task's (which sets the standardising shift and scale from its training split)
    """

    mixer: str = "attention"
    layers: list[str] | None = None
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = None
    vocab_size: int = 256
    mlp_ratio: float = 4.0
    mlp: dict[str, Any] = field(default_factory=lambda: {"kind": "swiglu"})
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    window: int | None = None
    init_std: float = 0.02
    mixer_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    deq: dict[str, Any] | None = None
    baseline: str | None = None
    baseline_options: dict[str, Any] = field(default_factory=dict)
    value_head: str | None = None
    value_head_options: dict[str, Any] = field(default_factory=dict)

    section: ClassVar[str] = "model"
    # mapping keys whose own keys are the fields of a dataclass (listed by `config_keys`)
    mapping_keys: ClassVar[dict[str, type]] = {"mlp": MoEConfig, "deq": DEQConfig}

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.deq is not None:
            deq = from_dict(DEQConfig, self.deq, "model.deq.")
            if deq.layers is not None and self.layers is not None and deq.layers != self.layers:
                raise ConfigError(
                    f"model.layers ({self.layers}) and model.deq.layers ({deq.layers}) both "
                    "name the blocks; set one of them"
                )
            self.deq = to_dict(deq)
            if deq.layers is not None:
                self.layers = list(deq.layers)
        if self.layers is not None:
            if not self.layers:
                raise ConfigError("model.layers must name at least one mixer")
            self.n_layers = len(self.layers)
        checks = [
            (self.d_model > 0, f"model.d_model must be positive, got {self.d_model}"),
            (
                0 < self.n_layers <= MAX_LAYERS,
                f"model.n_layers must lie in [1, {MAX_LAYERS}], got {self.n_layers}",
            ),
            (self.n_heads > 0, f"model.n_heads must be positive, got {self.n_heads}"),
            (self.vocab_size > 1, f"model.vocab_size must be > 1, got {self.vocab_size}"),
            (self.mlp_ratio >= 0, f"model.mlp_ratio must be >= 0, got {self.mlp_ratio}"),
            (
                self.n_heads > 0 and self.d_model % self.n_heads == 0,
                f"model.d_model ({self.d_model}) must be divisible by model.n_heads "
                f"({self.n_heads})",
            ),
            (
                self.n_kv_heads is None
                or (
                    self.n_kv_heads > 0 and self.n_heads > 0 and self.n_heads % self.n_kv_heads == 0
                ),
                f"model.n_heads ({self.n_heads}) must be a multiple of model.n_kv_heads "
                f"({self.n_kv_heads})",
            ),
            (
                self.window is None or self.window > 0,
                f"model.window must be positive, got {self.window}",
            ),
            (
                math.isfinite(self.mlp_ratio),
                f"model.mlp_ratio must be finite, got {self.mlp_ratio}",
            ),
            (
                _positive(self.norm_eps),
                f"model.norm_eps must be finite and > 0, got {self.norm_eps}",
            ),
            (
                _positive(self.rope_theta),
                f"model.rope_theta must be finite and > 0, got {self.rope_theta}",
            ),
            (
                _positive(self.init_std),
                f"model.init_std must be finite and > 0, got {self.init_std}",
            ),
        ]
        require(checks)
        self.mlp = self._resolved_mlp()
        if self.mlp["kind"] == "moe" and self.mlp_hidden() < 1:
            raise ConfigError(
                f"model.mlp: each expert's hidden width rounds to 0 (d_model {self.d_model}, "
                f"mlp_ratio {self.mlp_ratio}); set model.mlp.expert_ratio > 0 or a larger "
                "model.mlp_ratio"
            )
        names = [self.mixer, *(self.layers or [])]
        if not all(name.strip() for name in names):
            raise ConfigError(f"model.mixer and model.layers must name mixers, got {names}")
        if self.baseline_options and self.baseline is None:
            raise ConfigError("model.baseline_options is set but model.baseline names no baseline")
        if self.baseline is not None and not self.baseline.strip():
            raise ConfigError("model.baseline must name a baseline (seqlab list baselines)")
        if self.value_head_options and self.value_head is None:
            raise ConfigError(
                "model.value_head_options is set but model.value_head names no value head"
            )
        if self.value_head is not None and not self.value_head.strip():
            raise ConfigError("model.value_head must name a value head (seqlab list value_heads)")
        unused = sorted(set(self.mixer_options) - set(self.layer_names()))
        if unused:
            raise ConfigError(
                f"model.mixer_options names mixer(s) {unused} that the model does not use; "
                f"its mixers: {', '.join(dict.fromkeys(self.layer_names()))}"
            )

    def _resolved_mlp(self) -> dict[str, Any]:
        """`mlp` checked, with every option of its kind filled in."""
        options = dict(self.mlp)
        kind = options.pop("kind", "swiglu")
        if kind not in MLP_KINDS:
            raise ConfigError(f"model.mlp.kind must be one of {', '.join(MLP_KINDS)}, got {kind!r}")
        if kind == "swiglu":
            if options:
                raise ConfigError(
                    f"model.mlp with kind swiglu takes no other key (its width is "
                    f"model.mlp_ratio), got {', '.join(map(str, options))}; did you mean kind: moe?"
                )
            return {"kind": "swiglu"}
        return {"kind": "moe", **to_dict(from_dict(MoEConfig, options, "model.mlp."))}

    def moe(self) -> MoEConfig | None:
        """The mixture-of-experts options (None: the dense SwiGLU)."""
        options = {k: v for k, v in self.mlp.items() if k != "kind"}
        return MoEConfig(**options) if self.mlp["kind"] == "moe" else None

    def mlp_hidden(self) -> int:
        """The hidden width of the dense SwiGLU, or of each expert (0: no feed-forward)."""
        moe = self.moe()
        ratio = self.mlp_ratio
        if moe is not None:
            ratio = moe.expert_ratio or self.mlp_ratio / (moe.top_k + moe.shared)
        return int(round(ratio * self.d_model))

    def deq_config(self) -> DEQConfig | None:
        """The deep-equilibrium options (None: an ordinary block stack)."""
        return None if self.deq is None else DEQConfig(**self.deq)

    def layer_names(self) -> list[str]:
        return list(self.layers) if self.layers is not None else [self.mixer] * self.n_layers

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


@dataclass
class ObjectiveConfig:
    """A generation paradigm; every other key of the section is one of its options.

    Keys:
        name: the paradigm: a name (`seqlab list objectives -v`) or package.module:Name
        options: its options (also written as plain keys of the section)
    """

    name: str = "ar"
    options: dict[str, Any] = field(default_factory=dict)

    section: ClassVar[str] = "objective"

    def __post_init__(self) -> None:
        check_field_types(self)


@dataclass
class TaskConfig:
    """A task; every other key of the section is one of its options (`text` reads `data`).

    Keys:
        name: the task: a name (`seqlab list tasks -v`) or package.module:Name
        options: its options (also written as plain keys of the section)
    """

    name: str = "text"
    options: dict[str, Any] = field(default_factory=dict)

    section: ClassVar[str] = "task"

    def __post_init__(self) -> None:
        check_field_types(self)


DATA_FORMATS = ("text", "pairs")
PRECISIONS = ("fp32", "bf16-mixed", "fp16-mixed")


@dataclass
class DataConfig:
    """Where text comes from and how it becomes tokens (the `text` task).

    Keys:
        corpus: stdlib (the Python standard library's source), path (a text file or a
            folder of them), hf (a Hugging Face dataset saved to disk or by name) or
            wikipedia (a MediaWiki XML dump, .xml or .xml.bz2)
        path: the file, folder, dataset or dump that the path, hf and wikipedia corpora read
        format: text (windows of one token stream) or pairs (one source<TAB>target pair
            per line of the path corpus; only the target is scored)
        seq_len: tokens per training row (pairs: a row holds at most seq_len + 1)
        tokenizer: byte, bpe, or hf:PATH (a local tokenizer.json or tokenizer folder;
            its end-of-sequence token ends each document, its vocabulary sets the size)
        vocab_size: vocabulary of a trained bpe tokenizer
        cache_dir: where tokenized corpora are cached (null: $SEQLAB_CACHE or ~/.cache/seqlab)
        text_field: the text column of an hf dataset
        hf_split: use only this split of an hf dataset (null: all)
    """

    corpus: str = "stdlib"
    path: str | None = None
    format: str = "text"
    seq_len: int = 128
    tokenizer: str = "byte"
    vocab_size: int = 4096
    cache_dir: str | None = None
    text_field: str = "text"
    hf_split: str | None = None

    section: ClassVar[str] = "data"

    def __post_init__(self) -> None:
        check_field_types(self)
        require(
            [
                (self.seq_len >= 1, f"data.seq_len must be >= 1, got {self.seq_len}"),
                (self.vocab_size >= 1, f"data.vocab_size must be >= 1, got {self.vocab_size}"),
                (
                    self.format in DATA_FORMATS,
                    f"data.format must be one of {', '.join(DATA_FORMATS)}, got {self.format!r}",
                ),
                (
                    self.format != "pairs" or self.corpus == "path",
                    f"data.format: pairs reads a user file of source<TAB>target lines: set "
                    f"data.corpus: path and data.path, got data.corpus: {self.corpus}",
                ),
            ]
        )


STRATEGIES = ("ddp", "fsdp")
SEQUENCE_SPLITS = ("positions", "tokens")


@dataclass
class TrainConfig:
    """Optimisation, evaluation and checkpointing schedule.

    Keys:
        steps: optimizer steps
        batch_size: rows per step (per rank)
        grad_accum: micro-batches accumulated per step
        lr: peak learning rate (AdamW)
        min_lr_ratio: final learning rate / lr of the cosine decay
        warmup: linear warm-up steps
        weight_decay: AdamW decoupled weight decay (matrices only)
        beta1: AdamW beta1
        beta2: AdamW beta2
        grad_clip: global gradient-norm clip
        eval_every: steps between validation evaluations
        eval_tokens: validation tokens per evaluation
        checkpoint_every: steps between checkpoints
        keep_checkpoints: checkpoints kept on disk
        spike_guard: stop before a step whose loss exceeds this factor times the running
            loss (an exponential average, weight 0.1 per step); 0: off
        log_every: steps between log lines
        seed: seed of initialisation and data order
        device: auto, cpu, cuda or cuda:N
        threads: torch CPU threads (null: torch's default)
        init_from: a run or model directory whose weights start this run
        strategy: ddp (each process holds the whole model) or fsdp (parameters, gradients
            and optimizer state sharded over the processes, FSDP2; sharded checkpoints);
            one process trains the whole model under either
        activation_checkpointing: recompute each block's activations in the backward
            instead of keeping them (less memory, about one more forward of compute)
        precision: fp32, bf16-mixed or fp16-mixed (the forward under autocast; weights,
            optimizer, recurrence kernels and the loss in float32; fp16 with a gradient scaler)
        compile: torch.compile the model's forward (a failure stops the run, never silently)
        peak_flops: one device's peak FLOP/s for model-FLOPs utilisation (null: a known GPU's
            from a table; on CPU MFU is then not reported)
        sequence_parallel: ranks each sequence is split across (consecutive ranks form a
            group; processes = data-parallel replicas x this; objective ar, causal
            linear-recurrent mixers and attention, train.strategy ddp;
            `seqlab.sequence_parallel`)
        sequence_parallel_attention: how softmax attention layers run under it: ring (K/V
            blocks around the ring), ring_bidirectional (TokenRing: queries one way, partial
            outputs back) or ulysses (head-parallel all-to-all; N must divide the heads)
        sequence_split: how the rank boundaries are placed: positions (near-equal columns,
            balanced compute) or tokens (each rank an equal share of the batch's scored
            targets, i.e. of the loss; not of the compute, which follows the columns: pad
            columns are computed too and ring attention pads blocks to the longest shard)
    """

    steps: int = 200
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_tokens: int = 65536
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    spike_guard: float = 0.0
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    init_from: str | None = None
    strategy: str = "ddp"
    activation_checkpointing: bool = False
    precision: str = "fp32"
    compile: bool = False
    peak_flops: float | None = None
    sequence_parallel: int = 1
    sequence_parallel_attention: str = "ring"
    sequence_split: str = "positions"

    section: ClassVar[str] = "train"

    def __post_init__(self) -> None:
        check_field_types(self)
        positive = ["steps", "batch_size", "grad_accum", "eval_every", "checkpoint_every"]
        positive.append("sequence_parallel")
        for name in positive + ["log_every", "keep_checkpoints", "eval_tokens"]:
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        require(
            [
                (_positive(self.lr), f"train.lr must be positive and finite, got {self.lr}"),
                (
                    0 <= self.min_lr_ratio <= 1,
                    f"train.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}",
                ),
                (self.warmup >= 0, f"train.warmup must be >= 0, got {self.warmup}"),
                (
                    _non_negative(self.weight_decay),
                    f"train.weight_decay must be finite and >= 0, got {self.weight_decay}",
                ),
                (0 <= self.beta1 < 1, f"train.beta1 must lie in [0, 1), got {self.beta1}"),
                (0 <= self.beta2 < 1, f"train.beta2 must lie in [0, 1), got {self.beta2}"),
                (
                    _non_negative(self.grad_clip),
                    f"train.grad_clip must be finite and >= 0, got {self.grad_clip}",
                ),
                (
                    self.threads is None or self.threads >= 1,
                    f"train.threads must be >= 1 (or null: torch's default), got {self.threads}",
                ),
                (
                    self.spike_guard == 0
                    or (math.isfinite(self.spike_guard) and self.spike_guard > 1),
                    f"train.spike_guard must be 0 (off) or a finite factor > 1, got "
                    f"{self.spike_guard}",
                ),
                (
                    self.sequence_parallel_attention in SEQUENCE_PARALLEL_ATTENTION,
                    "train.sequence_parallel_attention must be one of "
                    f"{list(SEQUENCE_PARALLEL_ATTENTION)}, got "
                    f"{self.sequence_parallel_attention!r}",
                ),
                (
                    self.sequence_split in SEQUENCE_SPLITS,
                    f"train.sequence_split must be one of {list(SEQUENCE_SPLITS)}, got "
                    f"{self.sequence_split!r}",
                ),
                (
                    self.strategy in STRATEGIES,
                    f"train.strategy must be one of {list(STRATEGIES)}, got {self.strategy!r}",
                ),
                (
                    not (self.strategy == "fsdp" and self.precision == "fp16-mixed"),
                    "train.precision fp16-mixed is not supported with train.strategy fsdp (its "
                    "gradient scaler decides overflow per rank, on that rank's shard): use "
                    "bf16-mixed",
                ),
                (
                    self.precision in PRECISIONS,
                    f"train.precision must be one of {', '.join(PRECISIONS)}, got "
                    f"{self.precision!r}",
                ),
                (
                    self.peak_flops is None or _positive(self.peak_flops),
                    f"train.peak_flops must be positive and finite (or null), got "
                    f"{self.peak_flops}",
                ),
            ]
        )


OPS_BACKENDS = ("torch", "fla")


@dataclass
class OpsConfig:
    """Which kernels run the chunked linear-attention and delta-rule ops in training.

    Keys:
        backend: torch (seqlab's own kernels) or fla (flash-linear-attention's Triton
            kernels: needs the package and a CUDA device; `seqlab.ops.backend`)
    """

    backend: str = "torch"

    section: ClassVar[str] = "ops"

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.backend not in OPS_BACKENDS:
            raise ConfigError(
                f"ops.backend must be one of {', '.join(OPS_BACKENDS)}, got {self.backend!r}"
            )


@dataclass
class ExperimentConfig:
    """One training run: model x objective x task/data x training schedule.

    Keys:
        model: the backbone
        objective: the generation paradigm
        task: what is learned and how it is scored
        data: the corpus of the text task
        train: the optimisation schedule
        ops: the kernels of the chunked ops
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ops: OpsConfig = field(default_factory=OpsConfig)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            expected = _hints(type(self))[f.name]
            if not isinstance(section, expected):
                raise ConfigError(
                    f"{f.name} must be a {expected.__name__}, got {type(section).__name__}"
                )
        if self.task.name == "text" and self.train.eval_tokens < self.data.seq_len:
            raise ConfigError(
                f"train.eval_tokens ({self.train.eval_tokens}) must be at least one evaluation "
                f"window of the text task, data.seq_len ({self.data.seq_len})"
            )


_OPEN_SECTIONS = (ObjectiveConfig, TaskConfig)


@dataclass(frozen=True)
class ConfigKey:
    """One key of the experiment config: dotted name, default and one-line doc."""

    key: str
    default: Any
    doc: str


def field_docs(cls: type) -> dict[str, str]:
    """The `Keys:` section of a config dataclass's docstring: field -> one-line doc."""
    lines = (cls.__doc__ or "").split("\n")
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Keys:")
    except StopIteration:
        return {}
    docs: dict[str, str] = {}
    current = None
    for line in lines[start + 1 :]:
        text = line.strip()
        if not text:
            break
        name, sep, doc = text.partition(": ")
        if (
            sep
            and name.isidentifier()
            and line.startswith(" " * 8)
            and not line.startswith(" " * 12)
        ):
            current, docs[name] = name, doc
        elif current is not None:
            docs[current] += " " + text
    return docs


def config_keys(cls: type | None = None, prefix: str = "") -> list[ConfigKey]:
    """Every key of the experiment config with its default and doc, in declaration order."""
    cls = cls or ExperimentConfig
    docs = field_docs(cls)
    keys: list[ConfigKey] = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            keys.extend(config_keys(hint, f"{prefix}{f.name}."))
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        keys.append(ConfigKey(f"{prefix}{f.name}", default, docs.get(f.name, "")))
        if f.name in getattr(cls, "mapping_keys", {}):
            keys.extend(config_keys(cls.mapping_keys[f.name], f"{prefix}{f.name}."))
    return keys


def parse_value(text: str) -> Any:
    """Parse a command-line value: YAML syntax, plus plain numbers such as 1e-3."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        for cast in (int, float):
            try:
                return cast(value)
            except ValueError:
                pass
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting lossless cases (int -> float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if tp is Any:
        return value
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {_short(value)}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {_short(value)}")
        _, item = typing.get_args(tp)
        return {str(k): _coerce(v, item, f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    elif not isinstance(tp, type) or isinstance(value, tp):
        return value  # a value of the class, or an annotation this check does not read
    raise ConfigError(f"{key} must be {_type_name(tp)}, got {_short(value)}")


def resolve_annotation(annotation: Any, namespace: dict[str, Any]) -> Any:
    """A parameter's annotation as a type (string annotations evaluated in `namespace`, the
    defining module's globals); None when there is none or it names what `namespace` lacks
    (a name imported only for type checking)."""
    if annotation is inspect.Parameter.empty:
        return None
    if not isinstance(annotation, str):
        return annotation
    try:
        return eval(annotation, dict(namespace))  # noqa: S307 - the component's own annotation
    except Exception:  # noqa: BLE001 - an annotation that cannot be evaluated is not checked
        return None


def check_option_types(
    params: dict[str, inspect.Parameter],
    options: dict[str, Any],
    namespace: dict[str, Any],
    prefix: str,
) -> dict[str, Any]:
    """`options` checked against the annotations of the parameters that take them (a string
    is not a bool, 2.5 is not an int), lossless cases converted as in config files; an
    option whose annotation cannot be read passes as it is."""
    checked = {}
    for name, value in options.items():
        param = params.get(name)
        tp = None if param is None else resolve_annotation(param.annotation, namespace)
        checked[name] = value if tp is None else _coerce(value, tp, f"{prefix}{name}")
    return checked


def from_dict(cls: type, data: dict[str, Any] | None, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping, naming the valid keys when one is unknown."""
    section = prefix.rstrip(".") or "config"
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{section} must be a mapping, got {_short(data)}")
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    if cls in _OPEN_SECTIONS:
        options = data.pop("options", None) or {}
        if not isinstance(options, dict):
            raise ConfigError(f"{prefix}options must be a mapping, got {_short(options)}")
        options = dict(options)
        options.update({k: v for k, v in data.items() if k not in names})
        data = {k: v for k, v in data.items() if k in names}
        kwargs["options"] = options
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if not isinstance(key, str) or key not in names:
            raise ConfigError(
                f"unknown config key {dotted!r}; valid keys: "
                + ", ".join(f"{prefix}{n}" for n in names)
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, f"{dotted}.")
        else:
            kwargs[key] = _coerce(value, tp, dotted)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{section}: {err}") from None


def _short(value: Any, width: int = 60) -> str:
    """`repr(value)` cut to `width` characters, for one-line messages."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def to_dict(config: Any) -> dict[str, Any]:
    """Plain-data form of a config dataclass; open sections are flattened back."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, dict | list):
            value = yaml.safe_load(yaml.safe_dump(value))
        if isinstance(config, _OPEN_SECTIONS) and f.name == "options":
            out.update(value)
        else:
            out[f.name] = value
    return out


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys (`model.d_model` -> data['model']['d_model']) in a raw config mapping."""
    data = yaml.safe_load(yaml.safe_dump(data)) or {}
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"cannot set {dotted!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def _preset_dir() -> Path:
    return Path(__file__).parent / "presets"


def list_presets() -> list[str]:
    return sorted(p.stem for p in _preset_dir().glob("*.yaml"))


def read_config_mapping(source: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Raw mapping from a YAML path or a preset name (None: the built-in defaults)."""
    if source is None:
        return {}
    path = Path(source)
    if not path.exists():
        preset = _preset_dir() / f"{source}.yaml"
        if not preset.exists():
            raise ConfigError(
                f"config {str(source)!r} is neither a file nor a preset; presets: "
                + ", ".join(list_presets())
            )
        path = preset
    if path.is_dir():
        raise ConfigError(f"config {str(path)!r} is a directory, not a YAML file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config {str(path)!r} is not a text (UTF-8) YAML file") from None
    except OSError as err:
        raise ConfigError(f"config {str(path)!r} cannot be read: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({yaml_problem(err)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where, without echoing the file."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or type(err).__name__
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(problem).split())


def load_config(
    source: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None
) -> ExperimentConfig:
    """ExperimentConfig from a YAML file or preset name, with dotted overrides applied."""
    data = apply_overrides(read_config_mapping(source), overrides or {})
    return from_dict(ExperimentConfig, data)


def save_config(config: Any, path: str | os.PathLike[str]) -> None:
    """Write a config as YAML atomically."""
    atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))

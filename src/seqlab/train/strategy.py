"""How the processes of a `torchrun` job share a model (`train.strategy`), and activation
checkpointing (`train.activation_checkpointing`).

ddp: every process holds the whole model; DistributedDataParallel averages the gradients; rank
0 writes seqlab's own checkpoints (`checkpoint.py`).

fsdp: FSDP2 (`torch.distributed.fsdp.fully_shard`) on each Block, then on the model (which
keeps the embedding, the final norm and the head): parameters, gradients and AdamW moments
are split over the processes (dim 0 of every tensor), and each Block's weights are gathered
just for its forward and backward. Gradients are averaged across processes (a
reduce-scatter), so a step applies the same update as DDP or one process over the same global
batch, up to float rounding. Checkpoints are sharded: every rank writes its shard through
`torch.distributed.checkpoint` into the checkpoint's `.tmp/` directory (a filesystem every
node sees), then rank 0 seals it like any checkpoint (checksums, atomic rename, `latest`). A
sharded checkpoint resumes under any number of processes. The final `model.safetensors` is
gathered to rank 0 and written as one full float32 file, so every seqlab command loads it.
Every rank runs the validation (its forward needs every rank) with rank 0's random state, so
rank 0 reports what it would alone.

With one process both strategies train the plain model and write ordinary checkpoints.
A deep equilibrium model (`model.deq`) is refused under fsdp and activation checkpointing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from seqlab.config import ExperimentConfig, TrainConfig
from seqlab.errors import CheckpointError, ConfigError
from seqlab.files import non_finite_tensors
from seqlab.io import load_model_state, model_state, param_fingerprint
from seqlab.layout import Layout
from seqlab.model import Model, build_model
from seqlab.train.checkpoint import (
    SHARDED,
    Checkpoint,
    begin_checkpoint,
    finish_checkpoint,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from seqlab.train.dist import DistInfo, barrier, broadcast_object, gather_objects


def checkpoint_activations(model: Model) -> None:
    """Make every Block recompute its activations in the backward (non-reentrant
    `torch.utils.checkpoint`, random state replayed) instead of keeping them; a forward
    without autograd runs as before. Parameter names and values do not change."""
    if model.deq is not None:
        raise ConfigError(
            "train.activation_checkpointing does not apply to a deep equilibrium model "
            "(model.deq): its implicit backward keeps no per-iteration activations already"
        )
    for block in model.blocks:
        if "forward" in block.__dict__:
            continue  # already checkpointed

        def forward(*args: Any, _forward: Any = block.forward, **kwargs: Any) -> Any:
            if not torch.is_grad_enabled():
                return _forward(*args, **kwargs)
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)

        block.forward = forward


class Replicated:
    """train.strategy ddp, and either strategy in one process."""

    sharded = False

    def __init__(self, info: DistInfo, activation_checkpointing: bool = False) -> None:
        self.info = info
        self.activation_checkpointing = activation_checkpointing

    def wrap(self, model: Model, layout: Layout = Layout.CAUSAL) -> nn.Module:
        """The module the training step calls (call before building the optimizer), for an
        objective whose forward runs `layout`. DDP searches the autograd graph for parameters
        without a gradient only where a mixer declares some for this layout
        (`Model.unused_parameters`); every other model keeps the fast path."""
        if self.activation_checkpointing:
            checkpoint_activations(model)
        if not self.info.distributed:
            return model
        device_ids = [self.info.device.index] if self.info.device.type == "cuda" else None
        unused = bool(model.unused_parameters(layout))
        return nn.parallel.DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=unused
        )

    def no_sync(self, net: nn.Module) -> contextlib.AbstractContextManager[Any]:
        """Accumulate this micro-batch's gradients without communicating them."""
        return net.no_sync()

    def restore(self, path: Path, model: Model, optimizer: torch.optim.Optimizer) -> Checkpoint:
        checkpoint = load_checkpoint(path, self.info.device)
        load_model_state(model, checkpoint.model, path)
        optimizer.load_state_dict(checkpoint.optimizer)
        return checkpoint

    def non_finite(self, model: Model) -> str | None:
        """The name of a weight holding a NaN or an infinity (on any rank), or None."""
        bad = non_finite_tensors(model_state(model))
        return bad[0] if bad else None

    def save(
        self,
        out: Path,
        step: int,
        model: Model,
        optimizer: torch.optim.Optimizer,
        extra: dict[str, Any],
        keep: int,
    ) -> None:
        if self.info.is_main:
            save_checkpoint(out, step, model_state(model), optimizer.state_dict(), extra, keep)

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[bool]:
        """Yields whether this rank runs the validation."""
        yield self.info.is_main

    def full_model(self, model: Model, config: ExperimentConfig) -> Model | None:
        """The whole float32 model on rank 0 (None elsewhere), for `seqlab.io.save`."""
        return model if self.info.is_main else None

    def fingerprints(self, model: Model, full: Model | None) -> list[str]:
        return gather_objects(self.info, param_fingerprint(model))


class Sharded(Replicated):
    """train.strategy fsdp with several processes (FSDP2). Its torch modules are imported
    where used: torch.distributed.checkpoint alone takes seconds to import."""

    sharded = True

    def wrap(self, model: Model, layout: Layout = Layout.CAUSAL) -> nn.Module:
        from torch.distributed.fsdp import fully_shard

        if model.deq is not None:
            raise ConfigError(
                "train.strategy fsdp does not support a deep equilibrium model (model.deq), "
                "whose blocks run many times per step; use train.strategy: ddp"
            )
        if self.activation_checkpointing:
            checkpoint_activations(model)
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        return model

    @contextlib.contextmanager
    def no_sync(self, net: nn.Module) -> Iterator[None]:
        net.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            net.set_requires_gradient_sync(True)

    def restore(self, path: Path, model: Model, optimizer: torch.optim.Optimizer) -> Checkpoint:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        state: dict[str, Any] | None = None
        failure: CheckpointError | None = None
        if self.info.is_main:
            try:
                state = verify_checkpoint(path)
            except CheckpointError as err:
                failure = err
        state, failure = broadcast_object(self.info, (state, failure))
        if failure is not None:
            raise failure
        assert state is not None
        if state.get("format") != SHARDED:
            raise CheckpointError(
                f"{path} is a train.strategy ddp checkpoint (one whole copy); resume it with "
                "train.strategy: ddp"
            )
        weights, moments = get_state_dict(model, optimizer)
        shards = {"model": weights, "optimizer": moments}
        dcp.load(shards, checkpoint_id=path)
        set_state_dict(
            model, optimizer, model_state_dict=shards["model"], optim_state_dict=shards["optimizer"]
        )
        return Checkpoint(int(state["step"]), {}, {}, state.get("extra", {}))

    def non_finite(self, model: Model) -> str | None:
        weights = model_state(model)
        local = [t.to_local() if hasattr(t, "to_local") else t for t in weights.values()]
        flags = torch.tensor(
            [t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in local],
            dtype=torch.int32,
            device=self.info.device,
        )
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        bad = [name for name, flag in zip(weights, flags.tolist(), strict=True) if flag]
        return bad[0] if bad else None

    def save(
        self,
        out: Path,
        step: int,
        model: Model,
        optimizer: torch.optim.Optimizer,
        extra: dict[str, Any],
        keep: int,
    ) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        bad = self.non_finite(model)
        if bad is not None:
            raise CheckpointError(
                f"checkpoint step {step} not written: {bad} holds non-finite values"
            )
        if self.info.is_main:
            begin_checkpoint(out, step)
        barrier(self.info)
        weights, moments = get_state_dict(model, optimizer)
        tmp = out / "checkpoints" / f"step-{step:08d}.tmp"
        dcp.save({"model": weights, "optimizer": moments}, checkpoint_id=tmp)
        barrier(self.info)
        if self.info.is_main:
            state = {"format": SHARDED, "world_size": self.info.world_size, "extra": extra}
            finish_checkpoint(out, step, state, keep)

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[bool]:
        states = [torch.get_rng_state()]
        if self.info.device.type == "cuda":
            states.append(torch.cuda.get_rng_state(self.info.device))
        main = broadcast_object(self.info, states)
        torch.set_rng_state(main[0])
        if self.info.device.type == "cuda":
            torch.cuda.set_rng_state(main[1], self.info.device)
        yield True

    def full_model(self, model: Model, config: ExperimentConfig) -> Model | None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(model, options=options)
        if not self.info.is_main:
            return None
        full = build_model(config.model)
        full.load_state_dict({k: v.float() for k, v in weights.items()})
        return full

    def fingerprints(self, model: Model, full: Model | None) -> list[str]:
        return [broadcast_object(self.info, None if full is None else param_fingerprint(full))]


def build_strategy(config: TrainConfig, info: DistInfo) -> Replicated:
    """The strategy `train.strategy` names for this job."""
    sharded = config.strategy == "fsdp" and info.distributed
    return (Sharded if sharded else Replicated)(info, config.activation_checkpointing)

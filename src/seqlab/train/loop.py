"""The training loop: AdamW, warmup + cosine, clipping, accumulation, eval, checkpoints, DDP.

Every optimizer step is a pure function of (seed, step): its global batch comes from
`task.batch(..., step)`, split into the same rows whatever the number of processes and
accumulation micro-steps, and the global RNG is reseeded from (seed, step, rank) before the
step, so a run resumed from a checkpoint replays exactly what an uninterrupted run does.
A checkpoint also keeps what the summary reports (last loss, validation, tokens, running
loss), so a run killed after its last checkpoint resumes to the summary it would have written.

A step whose loss or gradient norm is not finite (or spikes, `train.spike_guard`) stops the
run before the optimizer applies it; the error names the step and the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from seqlab.auxiliary import recorded_metrics
from seqlab.baselines.base import Baseline, check_objective
from seqlab.config import (
    ExperimentConfig,
    ModelConfig,
    TrainConfig,
    from_dict,
    read_config_mapping,
    save_config,
    to_dict,
)
from seqlab.data.tasks import Task, build_task, model_config_for
from seqlab.errors import CheckpointError, ConfigError, SeqlabError
from seqlab.files import atomic_write_json, non_finite_tensors, read_json
from seqlab.io import initialize_from, model_state, param_fingerprint, save
from seqlab.model import Model, build_model
from seqlab.objectives import Objective, build_objective
from seqlab.objectives.base import NLL
from seqlab.ops.backend import ops_backend
from seqlab.sequence_parallel import (
    SequenceShard,
    check_model,
    check_supported,
    sequence_groups,
)
from seqlab.train.checkpoint import latest_checkpoint
from seqlab.train.dist import (
    DistInfo,
    barrier,
    broadcast_object,
    init_distributed,
    mean_across,
    shutdown,
)
from seqlab.train.guard import DivergenceGuard, gradient_norm
from seqlab.train.logging import MetricsLogger, progress_line
from seqlab.train.precision import (
    MixedPrecision,
    Throughput,
    compile_failures,
    compile_model,
    peak_flops,
)
from seqlab.train.rundir import RunLock, open_run_directory
from seqlab.train.strategy import build_strategy


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warmup over `warmup` steps, then cosine decay to `min_lr_ratio · lr`."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    span = max(config.steps - config.warmup, 1)
    progress = min((step - config.warmup) / span, 1.0)
    floor = config.min_lr_ratio
    return config.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: not on norms, biases, per-channel vectors,
    nor parameters marked by `mixers.base.no_weight_decay` (SSM spectra and time steps)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decayed = [p.dim() >= 2 and not getattr(p, "_no_weight_decay", False) for p in params]
    decay = [p for p, d in zip(params, decayed, strict=True) if d]
    no_decay = [p for p, d in zip(params, decayed, strict=True) if not d]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2))


def step_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0] >> 1)


@dataclasses.dataclass
class RunParts:
    config: ExperimentConfig
    task: Task
    model: Model
    objective: Objective


def build_run(config: ExperimentConfig, info: DistInfo | None = None) -> RunParts:
    """Task, objective and model for a config; the model's vocabulary is the task's plus the
    objective's extra tokens (a mask token for absorbing diffusion)."""
    main_first = info is not None and info.distributed
    if main_first and not info.is_main:
        barrier(info)
    if config.model.baseline is not None:
        check_objective(config.objective.name)
    task = build_task(config)
    if main_first and info.is_main:
        barrier(info)
    objective = build_objective(config.objective.name, task.vocab_size, **config.objective.options)
    task.check_objective(objective)
    if config.model.baseline is not None and task.value_head is not None:
        raise ConfigError(
            f"task {task.name!r} has a value beside every token, which a classical baseline "
            f"(model.baseline) does not model; train a neural model with a value head"
        )
    config = dataclasses.replace(config, model=model_config_for(config.model, task, objective))
    torch.manual_seed(config.train.seed)
    model = build_model(config.model)
    if objective.layout.kind not in model.layouts:
        raise ConfigError(
            f"objective {config.objective.name!r} reads the {objective.layout.kind.value} layout, "
            f"which mixers {config.model.layer_names()} do not support (they support "
            f"{sorted(k.value for k in model.layouts)}); choose an objective for those layouts"
        )
    return RunParts(config, task, model, objective)


def train(
    config: ExperimentConfig,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train `config` into `out_dir`; returns the run summary (also written to summary.json).

    `out_dir` must not hold a run or a saved model unless `resume` (continue it; a finished
    run is left as it is) or `overwrite` (replace it). `progress`: True draws a progress bar,
    False prints nothing, None draws the bar when stdout is a terminal and prints a plain
    line every `train.log_every` steps when it is not.
    """
    if not str(out_dir).strip():
        raise ConfigError("the run directory (--out) is empty; name a directory")
    out = Path(out_dir)
    info = init_distributed(config.train.device)
    lock: RunLock | None = None
    try:
        failure: SeqlabError | None = None
        if info.is_main:
            try:
                lock = open_run_directory(out, resume=resume, overwrite=overwrite)
            except SeqlabError as err:
                failure = err
        failure = broadcast_object(info, failure)
        if failure is not None:
            raise failure
        with ops_backend(config.ops.backend, info.device):
            summary = _train(config, out, info, resume, progress)
        if info.distributed:
            # Tear the group down only once every rank is done and the DDP wrapper (kept
            # alive by reference cycles) is freed: a rank that left first aborted in CI.
            gc.collect()
            barrier(info)
        return summary
    finally:
        if lock is not None:
            lock.release()
        shutdown(info)


def sequence_shard(config: ExperimentConfig, info: DistInfo) -> SequenceShard | None:
    """This rank's sequence-parallel shard (None without `train.sequence_parallel`), after
    refusing, in one line each, what it does not support."""
    tc = config.train
    if tc.sequence_parallel == 1:
        return None
    refused = [
        (config.objective.name != "ar", "objective ar only (a causal next-token loss)"),
        (tc.strategy != "ddp", "train.strategy ddp only (fsdp is not tested with it)"),
        (tc.compile, "no train.compile"),
        (tc.activation_checkpointing, "no train.activation_checkpointing"),
        (config.model.deq is not None, "no model.deq (its iterations differ per rank)"),
        (config.model.baseline is not None, "a neural model, not a baseline"),
    ]
    for refused_now, what in refused:
        if refused_now:
            raise ConfigError(f"train.sequence_parallel supports {what}")
    check_supported(config.model.layer_names())
    group, rank, _ = sequence_groups(info.world_size, info.rank, tc.sequence_parallel)
    attention, split = tc.sequence_parallel_attention, tc.sequence_split
    return SequenceShard(group, rank, tc.sequence_parallel, attention=attention, split=split)


# From this length on, the metrics that validation computes on rank 0 over whole sequences
# (beside the sharded NLL) draw a warning.
WHOLE_EVALUATION_WARNING = 8192


def check_sequence_parallel_run(
    model: Model, task: Task, objective: Objective, shard: SequenceShard
) -> None:
    """Before step 1, a one-line ConfigError for what the sharded loss does not support (a
    task with values beside its tokens, a layer with an auxiliary loss, `check_model`), and a
    one-line warning where validation computes more than the NLL, on rank 0 over whole
    sequences (`sharded_validation`), at long sequences."""
    if task.value_head is not None:
        raise ConfigError(
            f"train.sequence_parallel does not support task {task.name!r}: it has a value "
            f"beside every token (a value head), which the sharded loss does not model"
        )
    check_model(model, shard)
    if (
        shard.rank == 0
        and whole_metrics(task, objective)
        and task.seq_len >= WHOLE_EVALUATION_WARNING
    ):
        warnings.warn(
            f"train.sequence_parallel: validation computes task {task.name!r}'s metrics "
            f"beyond nll on rank 0 over whole sequences of {task.seq_len} tokens",
            stacklevel=2,
        )


def whole_metrics(task: Task, objective: Objective) -> bool:
    """Whether validation has metrics beyond the NLL (answers, generation, infilling or a
    task's own `evaluate`), which run on whole sequences."""
    own = type(task).evaluate is not Task.evaluate
    return own or task.scores_answers or task.infill_span is not None or task.generates(objective)


@torch.no_grad()
def sharded_validation(
    task: Task, model: Model, objective: Objective, shard: SequenceShard, max_tokens: int | None
) -> dict[str, Any]:
    """Validation under sequence parallelism: the NLL metrics with every rank computing its
    shard of each evaluation batch (`Objective.sharded_nll`, nats summed over the group), so
    no rank holds a whole sequence; the metrics beyond it (`whole_metrics`: predict,
    generate, infilling, a task's own metrics) run on rank 0 over whole sequences
    (`Task.evaluate`, its NLL replaced by the sharded one); other ranks return the NLL only."""
    was_training = model.training
    model.eval()
    total = NLL(0.0, 0, objective.bound)
    for batch in task.eval_batches("validation", 16, max_tokens):
        total = total + objective.sharded_nll(model, batch.to(model.device), shard)
    metrics = task.nll_metrics(total, "validation")
    if shard.rank == 0 and whole_metrics(task, objective):
        whole = task.evaluate(model, objective, split="validation", max_tokens=max_tokens)
        metrics = {**whole, **metrics}
    model.train(was_training)
    return metrics


def finished_summary(out: Path, steps: int) -> dict[str, Any] | None:
    """The summary of a run in `out` that already ran `steps` steps, or None."""
    path = out / "summary.json"
    if not path.is_file():
        return None
    summary = read_json(path)
    return summary if isinstance(summary, dict) and summary.get("steps") == steps else None


def _flat(data: dict[str, Any], prefix: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_same_architecture(out: Path, model: ModelConfig) -> None:
    """Resuming keeps the architecture of the run in `out`; a change names every key."""
    path = out / "config.yaml"
    if not path.is_file():
        return
    try:
        saved = from_dict(ExperimentConfig, read_config_mapping(path)).model
    except ConfigError as err:
        raise CheckpointError(f"{path}: {err}") from None
    before, now = _flat(to_dict(saved), "model."), _flat(to_dict(model), "model.")
    changed = [
        f"{key} ({before.get(key)!r} in the run, {now.get(key)!r} now)"
        for key in sorted(set(before) | set(now))
        if before.get(key) != now.get(key)
    ]
    if changed:
        raise ConfigError(f"cannot resume {out} with another architecture: " + ", ".join(changed))


def divergence_message(out: Path, step: int, problem: str, last_good: str | None) -> str:
    if last_good is None:
        advice = "no checkpoint was written before it; start again"
    else:
        advice = (
            f"the last good checkpoint is {out / 'checkpoints' / last_good}: resume from it "
            f"(seqlab train --out {out} --resume)"
        )
    return (
        f"training diverged at step {step}: {problem}; it was not applied and nothing "
        f"non-finite was written; {advice} with a lower train.lr or a longer train.warmup"
    )


def progress_mode(progress: bool | None, info: DistInfo) -> str:
    """ "bar", "lines" (plain lines on stdout, for logs) or "off"."""
    if not info.is_main or progress is False:
        return "off"
    if progress is None and not sys.stdout.isatty():
        return "lines"
    return "bar"


def _train(
    config: ExperimentConfig, out: Path, info: DistInfo, resume: bool, progress: bool | None
) -> dict[str, Any]:
    tc = config.train
    shard = sequence_shard(config, info)
    replicas = info.world_size // (1 if shard is None else shard.size)
    data_rank = info.rank if shard is None else info.rank // shard.size
    micro, remainder = divmod(tc.batch_size, replicas * tc.grad_accum)
    if remainder or micro == 0:
        raise ConfigError(
            f"train.batch_size ({tc.batch_size}) must be a positive multiple of data-parallel "
            f"processes x train.grad_accum ({replicas} x {tc.grad_accum})"
        )
    if tc.threads:
        torch.set_num_threads(tc.threads)
    elif info.distributed and info.device.type == "cpu":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))

    existing = latest_checkpoint(out) if resume else None
    refit = config.model.baseline is not None  # a baseline keeps no checkpoint: it fits again
    if resume and existing is None and not refit and finished_summary(out, tc.steps) is None:
        raise SeqlabError(f"{out}: no checkpoint to resume from")
    parts = build_run(config, info)
    config, task, model, objective = parts.config, parts.task, parts.model, parts.objective
    if resume:
        check_same_architecture(out, config.model)
        finished = finished_summary(out, tc.steps)
        if finished is not None:
            return finished
    if isinstance(model, Baseline):
        return _fit_baseline(parts, out, info)
    if shard is not None:
        check_sequence_parallel_run(model, task, objective, shard)
    if existing is None and tc.init_from:
        initialize_from(model, tc.init_from)
    model.to(info.device)
    strategy = build_strategy(tc, info)
    # fsdp shards the parameters here, before the optimizer
    net = strategy.wrap(model, objective.layout)
    optimizer = build_optimizer(model, tc)
    precision = MixedPrecision(tc.precision, info.device)
    start, elapsed_before, tokens_seen = 0, 0.0, 0
    last_loss: float | None = None
    evaluation: dict[str, Any] = {}
    guard = DivergenceGuard(tc.spike_guard)
    if existing is not None:
        checkpoint = strategy.restore(existing, model, optimizer)
        start, elapsed_before = checkpoint.step, float(checkpoint.extra.get("seconds", 0.0))
        tokens_seen = int(checkpoint.extra.get("tokens", 0))
        last_loss = checkpoint.extra.get("loss")
        evaluation = checkpoint.extra.get("validation", {})
        guard.running_loss = checkpoint.extra.get("running_loss")
        precision.load_state_dict(checkpoint.extra)
    last_good = existing.name if existing is not None else None
    if info.is_main:
        save_config(config, out / "config.yaml")
        save_tokenizer(task, out)
    logger = MetricsLogger(out, resume_step=start if resume else None, enabled=info.is_main)

    forward = precision.wrap(compile_model(net) if tc.compile else net)
    peak = peak_flops(info.device, tc.precision, tc.peak_flops)
    throughput = Throughput(
        model.flops_per_token(task.seq_len),
        None if peak is None else peak * info.world_size,  # tokens are counted on all ranks
        tokens_seen,
    )
    mode = progress_mode(progress, info)
    bar = tqdm(
        total=tc.steps,
        initial=start,
        disable=None if mode == "bar" and progress is None else mode != "bar",
        desc="train",
        dynamic_ncols=True,
    )
    t0 = time.perf_counter()
    model.train()
    for step in range(start, tc.steps):
        lr = lr_at(step, tc)
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(step_seed(tc.seed, step, info.rank))
        objective.set_step(step)
        loss_value = 0.0
        for m in range(tc.grad_accum):
            batch = task.batch(
                "train",
                step,
                micro,
                seed=tc.seed,
                rank=data_rank * tc.grad_accum + m,
                world_size=replicas * tc.grad_accum,
            ).to(info.device)
            sync = m == tc.grad_accum - 1 or not info.distributed
            no_sync = contextlib.nullcontext() if sync else strategy.no_sync(net)
            with no_sync, compile_failures(tc.compile):
                if shard is None:
                    loss, metrics = objective.training_loss(forward, batch)
                else:
                    loss, metrics = objective.sharded_loss(forward, batch, shard)
                precision.backward(loss / tc.grad_accum)
            loss_value += loss.item() / tc.grad_accum
            tokens_seen += batch.tokens.numel() * replicas
        done = step + 1
        is_last = done == tc.steps
        logging_step = done % tc.log_every == 0 or done % tc.eval_every == 0 or is_last
        saving_step = done % tc.checkpoint_every == 0 or is_last
        # The ranks' mean loss (a collective) only where it is logged, saved or judged by the
        # spike guard; a non-finite loss on any rank already makes every rank's gradient
        # norm non-finite after DDP's reduction.
        if logging_step or saving_step or tc.spike_guard > 0:
            last_loss = mean_across(info, loss_value)
        else:
            last_loss = loss_value
        precision.unscale(optimizer)
        grad_norm = gradient_norm(model.parameters(), tc.grad_clip)
        problem = guard.problem(last_loss, precision.judged_norm(grad_norm))
        if problem is not None:
            raise SeqlabError(divergence_message(out, done, problem, last_good))
        precision.step(optimizer)
        optimizer.zero_grad(set_to_none=True)
        guard.update(last_loss)
        seconds = elapsed_before + time.perf_counter() - t0
        if logging_step:
            record = {
                "step": done,
                "loss": last_loss,
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens": tokens_seen,
                "seconds": round(seconds, 3),
                **throughput.report(tokens_seen),
            }
            record.update({k: v for k, v in metrics.items() if k.startswith("aux_")})
            # read after the backward, so the adjoint solves' reports are in (last micro-batch)
            record.update(recorded_metrics(net))
            if done % tc.eval_every == 0 or is_last:
                if shard is not None:
                    evaluation = sharded_validation(task, model, objective, shard, tc.eval_tokens)
                    record.update({f"val_{k}": v for k, v in evaluation.items()})
                with strategy.evaluating() as evaluates:
                    if evaluates and shard is None:
                        evaluation = task.evaluate(
                            model, objective, split="validation", max_tokens=tc.eval_tokens
                        )
                        record.update({f"val_{k}": v for k, v in evaluation.items()})
                barrier(info)
            logger.log(record)
            bar.set_postfix(loss=f"{last_loss:.4f}")
            if mode == "lines":
                print(progress_line(record, tc.steps), flush=True)
        if saving_step:
            bad = strategy.non_finite(model)
            if bad is not None:
                problem = f"the weights {bad} hold non-finite values after it"
                raise SeqlabError(divergence_message(out, done, problem, last_good))
            extra = {
                "seconds": seconds,
                "tokens": tokens_seen,
                "loss": last_loss,
                "validation": evaluation,
                "running_loss": guard.running_loss,
                **precision.state_dict(),
            }
            strategy.save(out, done, model, optimizer, extra, tc.keep_checkpoints)
            last_good = f"step-{done:08d}"
            barrier(info)
        if logging_step:
            throughput.restart(tokens_seen)  # evaluation and checkpoints are not training
        bar.update(1)
    bar.close()
    logger.close()

    final = strategy.full_model(model, config)  # rank 0 only; fsdp gathers the shards
    fingerprints = strategy.fingerprints(model, final)
    seq_len = task.seq_len
    summary = {
        "steps": tc.steps,
        "world_size": info.world_size,
        "final_loss": last_loss,
        "validation": evaluation,
        "params": model.num_params(),
        "params_non_embedding": model.num_params(embeddings=False),
        "active_params": model.num_active_params(),
        "state_size": model.state_size(seq_len),
        "flops_per_token": model.flops_per_token(seq_len),
        "train_tokens": tokens_seen,
        "train_flops": 3.0 * model.flops_per_token(seq_len) * tokens_seen,
        "seconds": round(elapsed_before + time.perf_counter() - t0, 3),
        "param_fingerprints": fingerprints,
    }
    if info.is_main:
        save(final, out, config, overwrite=True)  # this run holds the directory's lock
        atomic_write_json(out / "summary.json", summary)
    return summary


def _fit_baseline(parts: RunParts, out: Path, info: DistInfo) -> dict[str, Any]:
    """A classical baseline's run: `fit` on the task's training batches of steps 0 ..
    train.steps - 1 (each `train.batch_size` rows, seeded as a neural run's), one
    validation, then `model.safetensors` and `summary.json` as a neural run writes them
    (metrics.jsonl: one line per fit iteration at step 0, `loss` its training loss, then the
    final line); no optimizer and no checkpoints: a run stopped before its summary fits again
    under `resume`, replacing only these files."""
    config, task, model, objective = parts.config, parts.task, parts.model, parts.objective
    tc = config.train
    if info.distributed:
        raise ConfigError(f"baseline {config.model.baseline!r} fits in one process; run it alone")
    if tc.init_from:
        raise ConfigError(
            "train.init_from does not apply to a baseline (it is fitted, not trained)"
        )
    ignored = {"precision": "fp32", "compile": False, "strategy": "ddp"}
    for key, default in ignored.items():
        if getattr(tc, key) != default:
            raise ConfigError(
                f"train.{key} does not apply to a baseline (it is fitted, not trained): "
                f"leave it at {default!r}"
            )
    model.to(info.device)
    t0 = time.perf_counter()
    batches = [
        task.batch("train", step, tc.batch_size, seed=tc.seed).to(info.device)
        for step in range(tc.steps)
    ]
    tokens_seen = sum(batch.tokens.numel() for batch in batches)
    torch.manual_seed(step_seed(tc.seed, 0, info.rank))
    model.eval()
    with torch.no_grad():
        model.fit(batches)
        bad = non_finite_tensors(model_state(model))
        if bad:
            raise SeqlabError(
                f"baseline {config.model.baseline!r}: fitting left {bad[0]} non-finite"
            )
        final_loss = objective.loss(model, batches[-1])[0].item()
        evaluation = task.evaluate(model, objective, split="validation", max_tokens=tc.eval_tokens)
    seq_len = task.seq_len
    seconds = round(time.perf_counter() - t0, 3)
    record = {"step": tc.steps, "loss": final_loss, "tokens": tokens_seen, "seconds": seconds}
    logger = MetricsLogger(out, resume_step=None, enabled=info.is_main)  # replaces any earlier
    for iteration, loss in enumerate(model.fit_curve, 1):  # the fit happens before step 1
        logger.log({"step": 0, "iteration": iteration, "loss": loss})
    logger.log({**record, **{f"val_{k}": v for k, v in evaluation.items()}})
    logger.close()
    summary = {
        "steps": tc.steps,
        "world_size": info.world_size,
        "final_loss": final_loss,
        "validation": evaluation,
        "params": model.num_params(),
        "params_non_embedding": model.num_params(embeddings=False),
        "active_params": model.num_active_params(),
        "state_size": model.state_size(seq_len),
        "flops_per_token": model.flops_per_token(seq_len),
        "train_tokens": tokens_seen,
        "train_flops": model.fit_flops,
        "fit_curve": model.fit_curve,
        "seconds": seconds,
        "param_fingerprints": [param_fingerprint(model)],
    }
    save(model, out, config, overwrite=True)  # this run holds the directory's lock
    save_tokenizer(task, out)
    atomic_write_json(out / "summary.json", summary)
    return summary


def save_tokenizer(task: Task, out: Path) -> None:
    """The task's tokenizer beside the run's config, so that every command reads the run's
    text as it was trained (tasks of token ids have none)."""
    tokenizer = getattr(task, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.save(out)

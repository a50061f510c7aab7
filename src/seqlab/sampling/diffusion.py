"""Diffusion decoding: a canvas of noise after the prompt, denoised block by block.

The new tokens start as masks (absorbing noise) or uniform draws (uniform noise) and are
denoised in blocks of `block_size`, left to right (semi-autoregressive); each block gets
`steps` denoising steps (the confidence sampler runs until its block is clean). What the
model reads depends on the objective it was trained with:

- full-sequence diffusion (`masked_diffusion`, `uniform_diffusion`): the whole canvas,
  prompt included, bidirectionally at every step (LLaDA's semi-AR order when
  `block_size` < `max_new_tokens`);
- `block_diffusion` (block b): blocks sit at multiples of b from position 0, as in
  training. Clean blocks are read block-causally, the current block bidirectionally on top
  of them. With `cache=True` the finished blocks live in the model's decode state (KV
  cache) and only the current block is run; without it the clean prefix is recomputed.
  Both give the same logits: the cache is exact. A KV cache takes the blocks finished
  since the last step in the same pass as the next block's first step, then forgets that
  block's entries; a recurrent state, which cannot forget, is prefilled in a pass of its
  own. Prompt tokens that share a block with new tokens are that block's already-unmasked
  tokens. A `shift` objective reads x̂_0 at i from the output at i − 1: for the block's
  first position, the last output of the clean prefix.

Samplers are rules plugged into one loop (`denoise`): a rule maps a block's tokens and x̂_0
to its next tokens. `ancestral` (the reverse process; a step that changed nothing reuses the
last prediction), `confidence` (Fast-dLLM: every mask above `threshold`, at least one per
step), `topk_confidence` (LLaDA low-confidence remasking), `remask` (ReMDM cap / rescale).
Each is declared by `@diffusion_sampler` on the function that builds its rule from the
`RuleInputs` and its own options; the shared options (`objective`, `steps`, `block_size`,
`cache`, `temperature`, `seed`, `condition`, `guidance`) are the driver's. `steps` counts
steps per block (default: one per new token of the block). A class-conditional objective
takes `condition`; `guidance` γ adds classifier-free guidance (γ = 1: plain conditional
sampling).

Every sampler reports NFE and wall time. NFE counts model evaluations: each denoising pass,
each separate prefill of finished blocks (recurrent states), and two per guided pass
(conditional and null class, batched in one call). Categorical draws are in float64 from
a `torch.Generator` seeded by `seed`.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from seqlab.errors import ConfigError, SeqlabError
from seqlab.layout import Layout
from seqlab.model import Model
from seqlab.objectives import build_objective
from seqlab.objectives.base import Objective
from seqlab.objectives.block import BlockDiffusion
from seqlab.objectives.diffusion import Diffusion, Hybrid
from seqlab.objectives.noise import absorbing_posterior, uniform_posterior
from seqlab.registry import SAMPLERS
from seqlab.sampling.ar import Generation
from seqlab.sampling.base import DENOISING, GUIDANCE, SamplingOptions, in_eval_mode, shares
from seqlab.state import can_drop_last, drop_last


def diffusion_objective(model: Model, objective: Objective | str | None) -> Diffusion:
    """The (bound) diffusion objective the model was trained with; a name is built and bound
    to the model's vocabulary less the objective's extra tokens. None: masked diffusion."""
    if objective is None or isinstance(objective, str):
        objective = build_objective(objective or "masked_diffusion")
        objective.bind(model.config.vocab_size - objective.extra_tokens)
    if not isinstance(objective, Diffusion):
        raise SeqlabError(f"diffusion samplers need a diffusion objective, got {objective.name!r}")
    if objective.vocab_size is None:
        objective.bind(model.config.vocab_size - objective.extra_tokens)
    return objective


class Context:
    """What the denoiser reads for the block [start, end) of the canvas; counts NFE.

    `block_causal=None`: the whole canvas bidirectionally. Otherwise blocks of that size
    from position 0: earlier blocks clean and block-causal, from a KV cache when `cache`.
    `shift` (block-causal only): position i reads the output at i − 1, as `BlockDiffusion`.
    """

    def __init__(
        self,
        model: Model,
        block_causal: int | None,
        cache: bool,
        prefix: Tensor | None = None,
        shift: bool = False,
    ) -> None:
        if shift and block_causal is None:
            raise SeqlabError("shifted x̂_0 needs block-causal decoding (block diffusion)")
        self.model, self.block, self.cache, self.prefix = model, block_causal, cache, prefix
        self.shift = shift
        self.state, self.cached, self.prefix_last = None, 0, None
        self.nfe = 0

    def block_start(self, position: int) -> int:
        """Where the block holding `position` begins (its earlier tokens are in the block)."""
        return position if self.block is None else position - position % self.block

    def logits(self, x: Tensor, start: int, end: int) -> Tensor:
        """Logits `[B, end − start, V]` of x̂_0 for the block, `start` from `block_start`.

        With a class `prefix` `[R·B, 1]` (full diffusion only) the canvas is read R times,
        once after each row's class token, in one call that counts as R evaluations (R = 2
        for guidance: conditional rows, then null-class rows); returns `[R·B, ...]`.
        """
        self.nfe += 1
        if self.block is None and self.prefix is not None:
            rows = self.prefix.shape[0] // x.shape[0]
            self.nfe += rows - 1
            canvas = torch.cat([self.prefix, x.repeat(rows, 1)], dim=1)
            return self.model(canvas, layout=Layout.BIDIRECTIONAL)[0][:, 1 + start : 1 + end]
        if self.block is None:
            return self.model(x, layout=Layout.BIDIRECTIONAL)[0][:, start:end]
        if not self.cache:
            out = self.model(x[:, :end], layout=Layout.block_causal(self.block))[0]
            return self._shifted(out[:, start:], out[:, start - 1 : start] if start else None)
        if self.cached < start:
            if self.state is None:
                self.state = self.model.init_state(x.shape[0])
            if self._fusable():
                return self._prefill_with_block(x, start, end)
            # recurrent states cannot forget the block: prefill the clean blocks alone
            chunk = x[:, self.cached : start]
            out, self.state = self.model(chunk, self.state, layout=Layout.block_causal(self.block))
            self.prefix_last = out[:, -1:]
            self.cached = start
            self.nfe += 1
        out = self.model(x[:, start:end], self.state, layout=Layout.BIDIRECTIONAL)[0]
        return self._shifted(out, self.prefix_last if start > 0 else None)

    def _fusable(self) -> bool:
        """Whether the cache can take the block's pass and forget it: KV caches that keep
        every entry (a sliding window would have trimmed entries the block pushed out)."""
        return self.model.config.window is None and can_drop_last(self.state)

    def _prefill_with_block(self, x: Tensor, start: int, end: int) -> Tensor:
        """One pass over the finished clean blocks and the current block, block-causally (the
        block reads them and itself, as on top of the cache); the cache then forgets the
        block's entries. Saves the separate prefill pass per block."""
        out, state = self.model(
            x[:, self.cached : end], self.state, layout=Layout.block_causal(self.block)
        )
        self.state = drop_last(state, end - start)
        clean = start - self.cached
        self.prefix_last = out[:, clean - 1 : clean]
        self.cached = start
        return self._shifted(out[:, clean:], self.prefix_last)

    def _shifted(self, out: Tensor, before: Tensor | None) -> Tensor:
        """The block's x̂_0 logits from its outputs `out` and the output before the block
        (`before` `[B, 1, V]`; None at position 0, which reads its own output)."""
        if not self.shift:
            return out
        return torch.cat([out[:, :1] if before is None else before, out[:, :-1]], dim=1)


# A rule updates one block: (tokens [B, n], x̂_0 probabilities [B, n, N] float64, the
# positions it may change [B, n], step i of `steps`) -> new tokens [B, n].
Rule = Callable[[Tensor, Tensor, Tensor, int, int], Tensor]


def x0_probs(logits: Tensor, vocab_size: int, temperature: float) -> Tensor:
    """x̂_0 over the data vocabulary (the mask logit dropped, SUBS) in float64."""
    logits = logits[..., :vocab_size].double()
    return (logits / temperature if temperature > 0 else logits).softmax(-1)


def geometric_mix(conditional: Tensor, unconditional: Tensor, guidance: float) -> Tensor:
    """Classifier-free guidance of two distributions `[..., N]`:
    p_γ ∝ p_c^γ · p_u^(1 − γ) (γ = 1: the conditional one; γ = 0: the unconditional)."""
    tiny = torch.finfo(conditional.dtype).tiny
    log_mix = guidance * conditional.clamp_min(tiny).log()
    log_mix = log_mix + (1 - guidance) * unconditional.clamp_min(tiny).log()
    return log_mix.softmax(-1)


def draw(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One float64 categorical draw per position of `probs [..., N]`."""
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


@torch.no_grad()
@in_eval_mode
def denoise(
    model: Model,
    prompt: Tensor,
    max_new_tokens: int,
    rule: Rule,
    *,
    objective: Diffusion,
    steps: int | None,
    block_size: int | None,
    cache: bool,
    temperature: float,
    until_clean: bool = False,
    stop_when_clean: bool = False,
    condition: Tensor | None = None,
    guidance: float | None = None,
    generator: torch.Generator | None = None,
) -> Generation:
    """Denoise `max_new_tokens` after `prompt` block by block with `rule`.

    Each block runs `steps` steps; `until_clean` runs steps until no mask is left instead
    (the rule unmasks at least one per step), and `stop_when_clean` ends a block's steps
    early once it has no mask (for rules that never touch a clean token). A step whose
    tokens did not change reuses the previous prediction instead of calling the model.

    A class-conditional objective reads the class `condition` `[B]` (None: the null class);
    `guidance` γ runs the null class beside it and mixes the two (on x̂_0 for absorbing
    noise, on the reverse posteriors for uniform noise, see `ancestral_rule`).
    """
    start_time = time.perf_counter()
    b, p = prompt.shape
    n_vocab = objective.vocab_size
    if isinstance(objective, BlockDiffusion):  # another size than trained: BlockGen
        block_causal = size = block_size or objective.block_size
    else:
        block_causal, size = None, block_size or max(max_new_tokens, 1)
    context = Context(
        model,
        block_causal,
        cache,
        _class_prefix(objective, condition, guidance, b, prompt.device),
        shift=isinstance(objective, BlockDiffusion) and objective.shift,
    )
    shape = (b, max_new_tokens)
    if objective.noise == "absorbing":
        canvas = torch.full(shape, objective.mask_id, dtype=torch.long, device=prompt.device)
    elif isinstance(objective.process, Hybrid):
        canvas = objective.process.prior(shape, generator, prompt.device)
    else:
        canvas = torch.randint(0, n_vocab, shape, generator=generator, device=prompt.device)
    x = torch.cat([prompt, canvas], dim=1)

    position = p
    while position < p + max_new_tokens:
        if block_causal is None:
            start, end = position, min(position + size, p + max_new_tokens)
        else:
            start = context.block_start(position)
            end = min(start + size, p + max_new_tokens)
        free = torch.zeros(b, end - start, dtype=torch.bool, device=x.device)
        free[:, position - start :] = True
        n_steps = steps or (end - position)
        step, probs = 0, None
        while until_clean or step < n_steps:
            if (until_clean or stop_when_clean) and not (x[:, start:end] == n_vocab).any():
                break
            if probs is None:
                probs = x0_probs(context.logits(x, start, end), n_vocab, temperature)
                if guidance is not None:
                    conditional, unconditional = probs.chunk(2)
                    if objective.noise == "absorbing":
                        probs = geometric_mix(conditional, unconditional, guidance)
                    else:
                        probs = torch.stack([conditional, unconditional])
            block = x[:, start:end]
            new = rule(block, probs, free, step, n_steps)
            if not torch.equal(new, block):
                x[:, start:end] = new
                probs = None
            step += 1
        position = end
    lengths = torch.full((b,), x.shape[1], dtype=torch.long, device=x.device)
    return Generation(x, context.nfe, time.perf_counter() - start_time, lengths=lengths)


def _coins(tokens: Tensor, generator: torch.Generator | None) -> Tensor:
    """U[0, 1) in float64, one per position."""
    return torch.rand(tokens.shape, dtype=torch.float64, generator=generator, device=tokens.device)


def _class_prefix(
    objective: Diffusion,
    condition: Tensor | None,
    guidance: float | None,
    batch_size: int,
    device: torch.device,
) -> Tensor | None:
    """Class tokens `[B, 1]`, or `[2B, 1]` (conditional, then null) under guidance."""
    if not objective.num_classes:
        if condition is not None or guidance is not None:
            raise SeqlabError(
                "condition and guidance need a class-conditional full-sequence "
                "diffusion objective (num_classes > 0)"
            )
        return None
    if condition is not None:
        condition = torch.as_tensor(condition, device=device).expand(batch_size)
    prefix = objective.class_prefix(condition, batch_size, device)
    if guidance is None:
        return prefix
    return torch.cat([prefix, objective.class_prefix(None, batch_size, device)])


def _times(step: int, steps: int) -> tuple[float, float]:
    """The step from t = 1 − i/steps to s = 1 − (i + 1)/steps."""
    return 1 - step / steps, 1 - (step + 1) / steps


def ancestral_rule(
    objective: Diffusion, generator: torch.Generator | None, guidance: float | None = None
) -> Rule:
    """The reverse process q(x_s | x_t, x_0 = x̂_0) on the objective's schedule (MDLM/UDLM).

    Under guidance uniform noise receives the stacked conditional and unconditional x̂_0
    `[2, B, n, N]` and mixes their posteriors (guidance on x̂_0 would not be a posterior).
    Hybrid noise draws from `Hybrid.posterior` over the data tokens and the mask (a masked
    token may stay masked, a decoded one may still change); it takes no guidance. The steps
    share one t over the canvas: a model trained under a non-flat hyperschedule is refused."""
    schedule = objective.schedule
    if not objective.hyperschedule.flat:
        raise ConfigError(
            f"ancestral sampling follows a flat schedule; the objective's "
            f"{objective.hyperschedule.kind} hyperschedule is not supported by it"
        )
    hybrid = objective.process if isinstance(objective.process, Hybrid) else None
    if hybrid is not None and guidance is not None:
        raise ConfigError(f"guidance is not supported with {objective.noise} noise")

    def rule(tokens: Tensor, probs: Tensor, free: Tensor, step: int, steps: int) -> Tensor:
        t, s = (torch.tensor(v, dtype=torch.float64) for v in _times(step, steps))
        if hybrid is not None:
            return torch.where(free, draw(hybrid.posterior(tokens, probs, t, s), generator), tokens)
        alpha_t, alpha_s = schedule.alpha(t), schedule.alpha(s)
        if objective.noise == "uniform":
            posterior = uniform_posterior(tokens, probs, alpha_t, alpha_s)
            if guidance is not None:
                posterior = geometric_mix(posterior[0], posterior[1], guidance)
            return torch.where(free, draw(posterior, generator), tokens)
        unmask = absorbing_posterior(alpha_t, alpha_s)[0]
        masked = free & (tokens == objective.mask_id)
        chosen = masked & (_coins(tokens, generator) < unmask)
        return torch.where(chosen, draw(probs, generator), tokens)

    return rule


def _candidates(
    probs: Tensor, temperature: float, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Proposed tokens (argmax at temperature 0, else a draw) and their x̂_0 probability."""
    tokens = probs.argmax(-1) if temperature == 0 else draw(probs, generator)
    return tokens, probs.gather(-1, tokens[..., None]).squeeze(-1)


def confidence_rule(
    mask_id: int, threshold: float, temperature: float, generator: torch.Generator | None
) -> Rule:
    """Fast-dLLM: unmask every masked position whose confidence exceeds `threshold`, and
    at least the most confident one per row."""

    def rule(tokens: Tensor, probs: Tensor, free: Tensor, step: int, steps: int) -> Tensor:
        proposal, confidence = _candidates(probs, temperature, generator)
        masked = free & (tokens == mask_id)
        confidence = confidence.masked_fill(~masked, -1.0)
        best = torch.zeros_like(masked).scatter(1, confidence.argmax(1, keepdim=True), True)
        chosen = masked & ((confidence > threshold) | best)
        return torch.where(chosen, proposal, tokens)

    return rule


def topk_confidence_rule(
    mask_id: int, temperature: float, generator: torch.Generator | None
) -> Rule:
    """LLaDA low-confidence remasking: unmask the k most confident masked positions, with k
    spreading the block's masks evenly over the remaining steps."""

    def rule(tokens: Tensor, probs: Tensor, free: Tensor, step: int, steps: int) -> Tensor:
        proposal, confidence = _candidates(probs, temperature, generator)
        masked = free & (tokens == mask_id)
        left = masked.sum(1, keepdim=True)
        k = -(-left // (steps - step))  # ceil: the last step unmasks everything left
        confidence = confidence.masked_fill(~masked, -1.0)
        rank = confidence.argsort(1, descending=True).argsort(1)
        return torch.where(masked & (rank < k), proposal, tokens)

    return rule


def remask_rule(
    objective: Diffusion, eta: float, strategy: str, generator: torch.Generator | None
) -> Rule:
    """ReMDM: a decoded token is remasked with probability σ_t, a mask is unmasked with
    (α_s − (1 − σ_t) α_t) / (1 − α_t); σ_max = min(1, (1 − α_s) / α_t) keeps both valid.
    `cap`: σ_t = min(η, σ_max); `rescale`: σ_t = η · σ_max. σ = 0 is MDLM's ancestral step."""
    if strategy not in ("cap", "rescale"):
        raise SeqlabError(f"remask strategy must be 'cap' or 'rescale', got {strategy!r}")
    if not 0 <= eta <= 1:
        raise SeqlabError(f"remask eta must lie in [0, 1], got {eta}")
    schedule, mask_id = objective.schedule, objective.mask_id

    def rule(tokens: Tensor, probs: Tensor, free: Tensor, step: int, steps: int) -> Tensor:
        t, s = (torch.tensor(v, dtype=torch.float64) for v in _times(step, steps))
        alpha_t, alpha_s = schedule.alpha(t), schedule.alpha(s)
        sigma_max = torch.clamp((1 - alpha_s) / alpha_t, max=1.0) if alpha_t > 0 else 1.0
        sigma = min(eta, float(sigma_max)) if strategy == "cap" else eta * float(sigma_max)
        unmask = float((alpha_s - (1 - sigma) * alpha_t) / (1 - alpha_t))
        masked = free & (tokens == mask_id)
        coin = _coins(tokens, generator)
        unmasked = masked & (coin < unmask)
        remasked = free & ~masked & (coin < sigma)
        out = torch.where(unmasked, draw(probs, generator), tokens)
        return out.masked_fill(remasked, mask_id)

    return rule


def _generator(model: Model, seed: object) -> torch.Generator | None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError(f"diffusion samplers take one integer seed (or none), got {seed!r}")
    return None if seed is None else torch.Generator(device=model.device).manual_seed(seed)


def _absorbing(objective: Diffusion, sampler: str) -> None:
    if objective.noise != "absorbing":
        raise ConfigError(f"the {sampler!r} sampler needs absorbing noise, got {objective.noise}")


@dataclass(frozen=True)
class RuleInputs:
    """What a diffusion sampler's rule is built from: the bound objective, the generator
    seeded by `seed`, and the shared `temperature` and `guidance` options."""

    objective: Diffusion
    generator: torch.Generator | None
    temperature: float
    guidance: float | None


RuleFactory = Callable[..., Rule]


def diffusion_sampler(
    *,
    absorbing: bool = False,
    until_clean: bool = False,
    stop_when_clean: bool | Callable[[Diffusion], bool] = False,
    **defaults: Any,
) -> Callable[[RuleFactory], Callable[..., Generation]]:
    """Decorator: a diffusion sampler from `make(inputs: RuleInputs, *, own options) -> Rule`.

    The sampler takes the shared denoising options (`defaults` replaces their defaults) and
    `make`'s own, and runs `denoise` with the rule. `absorbing`: the rule needs absorbing
    noise. `until_clean`: steps run until the block has no mask (no `steps` option);
    `stop_when_clean` (or a function of the objective): a block's steps end once it is
    clean, for rules that never touch a clean token (see `denoise`).
    """
    names = tuple(n for n in (*DENOISING, *GUIDANCE) if not (until_clean and n == "steps"))

    def decorate(make: RuleFactory) -> Callable[..., Generation]:
        def sampler(
            model: Model,
            prompt: Tensor,
            max_new_tokens: int,
            options: SamplingOptions,
            **own: Any,
        ) -> Generation:
            objective = diffusion_objective(model, options.objective)
            if absorbing:
                _absorbing(objective, make.__name__)
            generator = _generator(model, options.seed)
            inputs = RuleInputs(objective, generator, options.temperature, options.guidance)
            rule = make(inputs, **own)
            clean = stop_when_clean(objective) if callable(stop_when_clean) else stop_when_clean
            return denoise(
                model,
                prompt,
                max_new_tokens,
                rule,
                objective=objective,
                steps=1 if until_clean else options.steps,
                block_size=options.block_size,
                cache=options.cache,
                temperature=options.temperature,
                until_clean=until_clean,
                stop_when_clean=clean,
                condition=options.condition,
                guidance=options.guidance,
                generator=generator,
            )

        # the sampler's own options are those of `make`, after its `inputs`
        leading = list(inspect.signature(sampler).parameters.values())[:4]
        own = list(inspect.signature(make).parameters.values())[1:]
        sampler.__signature__ = inspect.Signature([*leading, *own])  # type: ignore[attr-defined]
        functools.update_wrapper(sampler, make)
        sampler.paradigm = "diffusion"  # type: ignore[attr-defined]  (read by the registry)
        return shares(*names, **defaults)(sampler)

    return decorate


@SAMPLERS.register("ancestral")
@diffusion_sampler(stop_when_clean=lambda objective: objective.noise == "absorbing")
def ancestral(inputs: RuleInputs) -> Rule:
    """The reverse process of the objective's noise (MDLM / UDLM ancestral sampling)."""
    return ancestral_rule(inputs.objective, inputs.generator, inputs.guidance)


@SAMPLERS.register("confidence")
@diffusion_sampler(absorbing=True, until_clean=True, temperature=0.0)
def confidence(inputs: RuleInputs, *, threshold: float = 0.9) -> Rule:
    """Fast-dLLM: unmask every position more confident than `threshold`, at least one per
    step, until the block is clean."""
    return confidence_rule(
        inputs.objective.mask_id, threshold, inputs.temperature, inputs.generator
    )


@SAMPLERS.register("topk_confidence")
@diffusion_sampler(absorbing=True, stop_when_clean=True, temperature=0.0)
def topk_confidence(inputs: RuleInputs) -> Rule:
    """LLaDA low-confidence remasking: the most confident masks, evenly over the steps."""
    return topk_confidence_rule(inputs.objective.mask_id, inputs.temperature, inputs.generator)


@SAMPLERS.register("remask")
@diffusion_sampler(absorbing=True)
def remask(inputs: RuleInputs, *, eta: float = 0.04, strategy: str = "cap") -> Rule:
    """ReMDM: the ancestral step plus remasking decoded tokens with probability σ_t
    (`strategy` cap: σ_t = min(`eta`, σ_max); rescale: σ_t = `eta` · σ_max)."""
    return remask_rule(inputs.objective, eta, strategy, inputs.generator)

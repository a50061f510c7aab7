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

Under an objective's non-flat hyperschedule (staircase, sliding: `noise.Hyperschedule`) the
canvas is one block whose positions step between their own noise levels τ_i(t) on a global
time grid (`denoise`); the `ancestral`, `acs` and `confidence` samplers follow it, the others
refuse it.

Samplers are rules plugged into one loop (`denoise`): a rule maps a block's tokens and x̂_0
to its next tokens. `ancestral` (the reverse process; a step that changed nothing reuses the
last prediction), `confidence` (Fast-dLLM: every mask above `threshold`, at least one per
step), `topk_confidence` (LLaDA low-confidence remasking), `remask` (ReMDM cap / rescale),
`lrd` (Latent Refinement Decoding: masks fed back as soft embeddings of their predictions,
`LatentRefinement`); `arpc` and `acs` (correctors, in their own modules) build on
`ancestral`. Each is declared by `@diffusion_sampler` on the function that builds its
rule from the `RuleInputs` and its own options; the shared options (`objective`, `steps`,
`block_size`, `cache`, `temperature`, `seed`, `condition`, `guidance`, `guidance_schedule`,
`guidance_rule`) are the driver's. `steps` counts steps per block (default: one per new
token of the block). A class-conditional objective takes `condition`; `guidance` γ adds
classifier-free guidance (γ = 1: plain conditional sampling, γ = 0: unconditional) with a
schedule γ(t) and a rule (`Guidance`: tilt x̂_0 only, or the whole reverse step).

Every sampler reports NFE and wall time. NFE counts model evaluations: each denoising pass
(soft passes included), each separate prefill of finished blocks (recurrent states), and two
per guided pass (conditional and null class, batched in one call). Categorical draws are in
float64 from a `torch.Generator` seeded by `seed`.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
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
from seqlab.sampling.base import (
    DENOISING,
    GUIDANCE,
    SamplingOptions,
    in_eval_mode,
    seed_generator,
    shares,
)
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

    def logits(self, x: Tensor, start: int, end: int, soft: Tensor | None = None) -> Tensor:
        """Logits `[B, end − start, V]` of x̂_0 for the block, `start` from `block_start`.

        With a class `prefix` `[R·B, 1]` (full diffusion only) the canvas is read R times,
        once after each row's class token, in one call that counts as R evaluations (R = 2
        for guidance: conditional rows, then null-class rows); returns `[R·B, ...]`.
        `soft` `[B, end − start, d_model]` is added to the block's token embeddings (the
        model's `input_embeddings`; zero elsewhere), e.g. soft masks (`lrd`).
        """
        self.nfe += 1
        if self.block is None and self.prefix is not None:
            rows = self.prefix.shape[0] // x.shape[0]
            self.nfe += rows - 1
            canvas = torch.cat([self.prefix, x.repeat(rows, 1)], dim=1)
            soft = None if soft is None else soft.repeat(rows, 1, 1)
            extra = _placed(soft, canvas.shape[1], 1 + start)
            out = self.model(canvas, layout=Layout.BIDIRECTIONAL, input_embeddings=extra)[0]
            return out[:, 1 + start : 1 + end]
        if self.block is None:
            extra = _placed(soft, x.shape[1], start)
            return self.model(x, layout=Layout.BIDIRECTIONAL, input_embeddings=extra)[0][
                :, start:end
            ]
        if not self.cache:
            extra = _placed(soft, end, start)
            out = self.model(
                x[:, :end], layout=Layout.block_causal(self.block), input_embeddings=extra
            )[0]
            return self._shifted(out[:, start:], out[:, start - 1 : start] if start else None)
        if self.cached < start:
            if self.state is None:
                self.state = self.model.init_state(x.shape[0])
            if self._fusable():
                return self._prefill_with_block(x, start, end, soft)
            # recurrent states cannot forget the block: prefill the clean blocks alone
            chunk = x[:, self.cached : start]
            out, self.state = self.model(chunk, self.state, layout=Layout.block_causal(self.block))
            self.prefix_last = out[:, -1:]
            self.cached = start
            self.nfe += 1
        out = self.model(
            x[:, start:end], self.state, layout=Layout.BIDIRECTIONAL, input_embeddings=soft
        )[0]
        return self._shifted(out, self.prefix_last if start > 0 else None)

    def _fusable(self) -> bool:
        """Whether the cache can take the block's pass and forget it: KV caches that keep
        every entry (a sliding window would have trimmed entries the block pushed out)."""
        return self.model.config.window is None and can_drop_last(self.state)

    def _prefill_with_block(
        self, x: Tensor, start: int, end: int, soft: Tensor | None = None
    ) -> Tensor:
        """One pass over the finished clean blocks and the current block, block-causally (the
        block reads them and itself, as on top of the cache); the cache then forgets the
        block's entries. Saves the separate prefill pass per block."""
        out, state = self.model(
            x[:, self.cached : end],
            self.state,
            layout=Layout.block_causal(self.block),
            input_embeddings=_placed(soft, end - self.cached, start - self.cached),
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


def _placed(soft: Tensor | None, length: int, offset: int) -> Tensor | None:
    """`soft` `[B, n, d]` at positions [offset, offset + n) of zeros `[B, length, d]`."""
    if soft is None:
        return None
    out = soft.new_zeros(soft.shape[0], length, soft.shape[2])
    out[:, offset : offset + soft.shape[1]] = soft
    return out


# A rule updates one block: (tokens [B, n], x̂_0 probabilities [B, n, N] float64, the
# positions it may change [B, n], step i of `steps`) -> new tokens [B, n]. The rules of
# samplers declared with `hyperschedule=True` also take `levels=(τ_t, τ_s)` `[n]` under a
# non-flat hyperschedule (see `denoise`).
Rule = Callable[..., Tensor]


def x0_probs(logits: Tensor, vocab_size: int, temperature: float) -> Tensor:
    """x̂_0 over the data vocabulary (the mask logit dropped, SUBS) in float64."""
    logits = logits[..., :vocab_size].double()
    return (logits / temperature if temperature > 0 else logits).softmax(-1)


def tilt(conditional: Tensor, unconditional: Tensor, guidance: float) -> tuple[Tensor, Tensor]:
    """Classifier-free guidance of two distributions `[..., N]`: p_γ = p_c^γ · p_u^(1 − γ) / Z_γ
    and its normaliser Z_γ = Σ_y p_c^γ(y) · p_u^(1 − γ)(y) `[...]`. γ = 1 returns p_c and
    γ = 0 returns p_u exactly (Z = 1), so guided sampling there repeats plain sampling.
    Z_γ ≤ 1 for γ in [0, 1] (Hölder) and Z_γ ≥ 1 for γ > 1."""
    if guidance in (0, 1):
        chosen = conditional if guidance == 1 else unconditional
        return chosen, torch.ones_like(chosen[..., 0])
    tiny = torch.finfo(conditional.dtype).tiny
    log_mix = guidance * conditional.clamp_min(tiny).log()
    log_mix = log_mix + (1 - guidance) * unconditional.clamp_min(tiny).log()
    log_z = log_mix.logsumexp(-1, keepdim=True)
    return (log_mix - log_z).exp(), log_z.squeeze(-1).exp()


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance: the scale γ, its schedule over time, and its rule.

    The schedule moves γ(t) from 1 (plain conditional sampling) at t = 1 (all noise) to γ
    at t = 0 (clean), so guidance is weak while the canvas is mostly noise and strong late
    (Rojas et al., 2025: early guidance harms, late guidance helps):

        constant:   γ(t) = γ
        linear:     γ(t) = 1 + (γ − 1)(1 − t)
        increasing: γ(t) = 1 + (γ − 1)(1 − t)²

    Every schedule is 1 for γ = 1. Rules (for a step from t to s < t):

    - `normalized` (Rojas et al., 2025): tilt the denoiser only, x̂_0 → p_γ (`tilt`), and
      step with it. Under absorbing noise a mask is unmasked with (α_s − α_t)/(1 − α_t), as
      unguided: only which token it becomes is guided. Uniform and hybrid noise plug p_γ
      into their reverse step.
    - `unnormalized`: tilt the whole reverse transition q(x_s | x_t, x̂_0) over all states,
      staying included (Schiff et al., 2025; the rate form of Nisonoff et al., 2025 is its
      small-step limit). Under absorbing noise a mask moves to y with weight
      u · p_c(y)^γ p_u(y)^(1 − γ) and stays with 1 − u, u = (α_s − α_t)/(1 − α_t), so it is
      unmasked with u·Z_γ / (u·Z_γ + 1 − u): Z_γ > 1 (γ > 1) unmasks faster than the
      schedule, Z_γ < 1 slower. Ancestral sampling only.
    """

    scale: float
    schedule: str = "constant"
    rule: str = "normalized"

    def at(self, t: float) -> float:
        """γ(t)."""
        if self.schedule == "constant":
            return self.scale
        ramp = 1 - t if self.schedule == "linear" else (1 - t) ** 2
        return 1 + (self.scale - 1) * ramp


def guided_probs(raw: Tensor, guidance: Guidance | None, t: float) -> Tensor:
    """What a rule reads from the denoiser's x̂_0 `raw`: `[B, n, N]` unguided; under guidance
    `raw` stacks the conditional and unconditional x̂_0 `[2, B, n, N]`, and the normalized
    rule gets p_γ(t) while the unnormalized one gets both (it tilts the whole step)."""
    if guidance is None or guidance.rule == "unnormalized":
        return raw
    return tilt(raw[0], raw[1], guidance.at(t))[0]


def absorbing_transition(
    unmask: Tensor, probs: Tensor, guidance: Guidance | None, t: float
) -> tuple[Tensor, Tensor]:
    """A masked position's reverse step: (the probability that it is unmasked `[...]`, the
    distribution of the token it becomes `[..., N]`), from the unguided unmasking
    probability u = (α_s − α_t)/(1 − α_t) and what `guided_probs` gave. Normalized rule
    (and unguided): u and x̂_0 (or p_γ). Unnormalized: u·Z_γ / (u·Z_γ + 1 − u) and p_γ."""
    if guidance is None or guidance.rule == "normalized":
        return unmask.expand(probs.shape[:-1]), probs
    gamma = guidance.at(t)
    tilted, z = tilt(probs[0], probs[1], gamma)
    if gamma in (0, 1):
        return unmask.expand(tilted.shape[:-1]), tilted
    return unmask * z / (unmask * z + 1 - unmask), tilted


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
    guidance: Guidance | None = None,
    generator: torch.Generator | None = None,
) -> Generation:
    """Denoise `max_new_tokens` after `prompt` block by block with `rule`.

    Each block runs `steps` steps; `until_clean` runs steps until no mask is left instead
    (the rule unmasks at least one per step), and `stop_when_clean` ends a block's steps
    early once it has no mask (for rules that never touch a clean token). A step whose
    tokens did not change reuses the previous prediction instead of calling the model.

    A class-conditional objective reads the class `condition` `[B]` (None: the null class);
    `guidance` runs the null class beside it and mixes the two at γ(t) (`Guidance`); t is
    the step's time, or for rules without steps the fraction of the block's free positions
    still masked.

    Under a non-flat hyperschedule (`noise.Hyperschedule`, full-sequence diffusion, the
    canvas as one block) the steps follow the global grid t_k = 1 − k/K, K = `steps` or
    `Hyperschedule.sampling_steps` of the canvas (prompt included: training placed the levels
    over whole sequences), and the rule is also given `levels=(τ(t_k), τ(t_{k+1}))`, each
    position's own levels `[n]`: positions at τ = 1 stay noise, those reaching τ = 0 are
    committed. Steps that move no free position's level are skipped (no model call, no draw);
    `until_clean` rules run the K steps (ending once clean), and t is the grid time.

    A rule with a `feed(tokens, probs, free)` method gives the embeddings to add to the
    block's next pass (`Context.logits`' `soft`, None: none); a step that feeds one always
    runs the model again. A rule with a `correct(x, start, end, free, context)` method is
    asked once a block's steps end: it returns the block's tokens with some positions
    re-noised, and the block's steps run again from step 0, or None to move on (its own
    model calls go through `context`, or add to `context.nfe`).
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
        _class_prefix(objective, condition, guidance is not None, b, prompt.device),
        shift=isinstance(objective, BlockDiffusion) and objective.shift,
    )
    feed = getattr(rule, "feed", None)
    correct = getattr(rule, "correct", None)
    hyper = None if objective.hyperschedule.flat else objective.hyperschedule
    if hyper is not None and size < max_new_tokens:
        raise ConfigError(
            f"a {hyper.kind} hyperschedule orders the whole canvas itself: full-sequence "
            f"diffusion samples it as one block (block_size None or >= max_new_tokens, "
            f"got {block_size})"
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
        if hyper is not None:
            n_steps = hyper.sampling_steps(x.shape[1]) if until_clean or not steps else steps
        while True:
            step, raw, soft = 0, None, None
            while (until_clean and hyper is None) or step < n_steps:
                masks = x[:, start:end] == n_vocab
                if (until_clean or stop_when_clean) and not masks.any():
                    break
                levels = None
                if hyper is not None:
                    levels = tuple(
                        hyper.grid_levels(x.shape[1], k, n_steps, x.device)[start:end]
                        for k in (step, step + 1)
                    )
                    if not (free & (levels[1] < levels[0])).any():
                        step += 1
                        continue
                if raw is None:
                    raw = x0_probs(context.logits(x, start, end, soft), n_vocab, temperature)
                    if guidance is not None:
                        raw = torch.stack(raw.chunk(2))
                if until_clean and hyper is None:
                    t = float(masks[free].double().mean())
                else:
                    t = _times(step, n_steps)[0]
                probs = guided_probs(raw, guidance, t)
                block = x[:, start:end]
                if levels is None:
                    new = rule(block, probs, free, step, n_steps)
                else:
                    new = rule(block, probs, free, step, n_steps, levels=levels)
                soft = feed(new, probs, free) if feed is not None else None
                if soft is not None or not torch.equal(new, block):
                    x[:, start:end] = new
                    raw = None
                step += 1
            again = correct(x, start, end, free, context) if correct is not None else None
            if again is None:
                break
            x[:, start:end] = again
        position = end
    lengths = torch.full((b,), x.shape[1], dtype=torch.long, device=x.device)
    return Generation(x, context.nfe, time.perf_counter() - start_time, lengths=lengths)


def _coins(tokens: Tensor, generator: torch.Generator | None) -> Tensor:
    """U[0, 1) in float64, one per position."""
    return torch.rand(tokens.shape, dtype=torch.float64, generator=generator, device=tokens.device)


def _class_prefix(
    objective: Diffusion,
    condition: Tensor | None,
    guided: bool,
    batch_size: int,
    device: torch.device,
) -> Tensor | None:
    """Class tokens `[B, 1]`, or `[2B, 1]` (conditional, then null) under guidance."""
    if not objective.num_classes:
        if condition is not None or guided:
            raise SeqlabError(
                "condition and guidance need a class-conditional full-sequence "
                "diffusion objective (num_classes > 0)"
            )
        return None
    if condition is not None:
        condition = torch.as_tensor(condition, device=device).expand(batch_size)
    prefix = objective.class_prefix(condition, batch_size, device)
    if not guided:
        return prefix
    return torch.cat([prefix, objective.class_prefix(None, batch_size, device)])


def _times(step: int, steps: int) -> tuple[float, float]:
    """The step from t = 1 − i/steps to s = 1 − (i + 1)/steps."""
    return 1 - step / steps, 1 - (step + 1) / steps


def ancestral_rule(
    objective: Diffusion,
    generator: torch.Generator | None,
    guidance: Guidance | None = None,
    *,
    temperature: float = 1.0,
) -> Rule:
    """The reverse process q(x_s | x_t, x_0 = x̂_0) on the objective's schedule (MDLM/UDLM).

    Hybrid noise draws from `Hybrid.posterior` over the data tokens and the mask (a masked
    token may stay masked, a decoded one may still change). Under the unnormalized guidance
    rule the rule receives the stacked conditional and unconditional x̂_0 `[2, B, n, N]` and
    tilts the whole step: the posteriors of uniform and hybrid noise (`tilt` over all their
    states), the unmasking probability and token of absorbing noise (`absorbing_transition`).

    The steps share one t over the canvas, or under a non-flat hyperschedule take each
    position's own levels `levels = (τ_t, τ_s)` `[n]` (from `denoise`): position i steps
    from α(τ_i(t)) to α(τ_i(s)) with the same posterior, and a position whose level does not
    move (τ = 1: still noise; τ = 0: committed) is left as it is. Reaching τ_s = 0 unmasks
    with probability 1 (absorbing) and leaves no mask (hybrid).

    At `temperature` 0 the tokens are greedy: x̂_0 is replaced by its one-hot mode (which
    positions move is still drawn from the posterior)."""
    schedule = objective.schedule
    hybrid = objective.process if isinstance(objective.process, Hybrid) else None
    whole = guidance is not None and guidance.rule == "unnormalized"

    def rule(
        tokens: Tensor,
        probs: Tensor,
        free: Tensor,
        step: int,
        steps: int,
        levels: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        t, s = (torch.tensor(v, dtype=torch.float64) for v in _times(step, steps))
        gamma_t = float(t)
        if temperature == 0:
            probs = F.one_hot(probs.argmax(-1), probs.shape[-1]).to(probs.dtype)
        if levels is not None:  # each position at its own levels; still ones kept as they are
            free = free & (levels[1] < levels[0])
            # still positions get an interior pair, finite for every process (draws discarded)
            t = torch.where(free, levels[0], 0.5)
            s = torch.where(free, levels[1], 0.25)
        if objective.noise != "absorbing":
            if hybrid is not None:
                posterior = functools.partial(hybrid.posterior, tokens, t=t, s=s)
            else:
                alpha_t, alpha_s = schedule.alpha(t), schedule.alpha(s)
                posterior = functools.partial(
                    uniform_posterior, tokens, alpha_t=alpha_t, alpha_s=alpha_s
                )
            if whole:
                gamma = guidance.at(gamma_t)
                step_probs = tilt(posterior(probs[0]), posterior(probs[1]), gamma)[0]
            else:
                step_probs = posterior(probs)
            return torch.where(free, draw(step_probs, generator), tokens)
        unmask = absorbing_posterior(schedule.alpha(t), schedule.alpha(s))[0]
        unmask, token_probs = absorbing_transition(unmask, probs, guidance, gamma_t)
        masked = free & (tokens == objective.mask_id)
        chosen = masked & (_coins(tokens, generator) < unmask)
        return torch.where(chosen, draw(token_probs, generator), tokens)

    return rule


def _candidates(
    probs: Tensor, temperature: float, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Proposed tokens (argmax at temperature 0, else a draw) and their x̂_0 probability."""
    tokens = probs.argmax(-1) if temperature == 0 else draw(probs, generator)
    return tokens, probs.gather(-1, tokens[..., None]).squeeze(-1)


def _confident(
    tokens: Tensor, confidence: Tensor, free: Tensor, mask_id: int, threshold: float
) -> Tensor:
    """The masks to unmask `[B, n]`: every free mask whose confidence exceeds `threshold`,
    and the most confident free mask of each row."""
    masked = free & (tokens == mask_id)
    confidence = confidence.masked_fill(~masked, -1.0)
    best = torch.zeros_like(masked).scatter(1, confidence.argmax(1, keepdim=True), True)
    return masked & ((confidence > threshold) | best)


def confidence_rule(
    mask_id: int, threshold: float, temperature: float, generator: torch.Generator | None
) -> Rule:
    """Fast-dLLM: unmask every masked position whose confidence exceeds `threshold`, and
    at least the most confident one per row.

    Under a non-flat hyperschedule (`levels = (τ_t, τ_s)` `[n]`) only positions whose
    window has opened by the step's end (τ_s < 1) may be unmasked, by the same rule, and
    every mask reaching τ_s = 0 is: each row's masks are committed in the schedule's order
    (a staircase of width 1 with K = L steps commits exactly position k at step k)."""

    def rule(
        tokens: Tensor,
        probs: Tensor,
        free: Tensor,
        step: int,
        steps: int,
        levels: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        proposal, confidence = _candidates(probs, temperature, generator)
        if levels is None:
            chosen = _confident(tokens, confidence, free, mask_id, threshold)
        else:
            chosen = _confident(tokens, confidence, free & (levels[1] < 1), mask_id, threshold)
            chosen = chosen | (free & (tokens == mask_id) & (levels[1] == 0))
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


def truncated(probs: Tensor, top_p: float) -> Tensor:
    """x̂_0 `[..., N]` kept on its top-p set (the most probable tokens until their mass
    reaches `top_p`, at least one) and renormalised there."""
    ordered, order = probs.sort(-1, descending=True)
    keep = torch.zeros_like(probs, dtype=torch.bool)
    keep.scatter_(-1, order, ordered.cumsum(-1) - ordered < top_p)
    kept = probs * keep
    return kept / kept.sum(-1, keepdim=True)


def soft_embeddings(
    probs: Tensor, embeddings: Tensor, mask_id: int, mix: float, top_p: float
) -> Tensor:
    """LRD's soft mask `[..., d]`: ẽ = (1 − λ)·e_mask + λ·Σ_v p̃(v)·e_v, p̃ = x̂_0 `probs`
    `[..., N]` truncated to its top-p set (`truncated`), λ = `mix`, e the rows of the
    embedding table `embeddings` `[V, d]` (data tokens first), in the dtype of `probs`."""
    table = embeddings.to(probs.dtype)
    expected = truncated(probs, top_p) @ table[: probs.shape[-1]]
    return (1 - mix) * table[mask_id] + mix * expected


def kl_divergence(p: Tensor, q: Tensor) -> Tensor:
    """KL(p ‖ q) `[...]` of distributions `[..., N]` (0·log 0 = 0, q floored at the
    smallest positive float)."""
    tiny = torch.finfo(p.dtype).tiny
    return (p * (p.clamp_min(tiny).log() - q.clamp_min(tiny).log())).sum(-1)


def prediction_change(probs: Tensor, previous: Tensor, masked: Tensor) -> Tensor:
    """Per row `[B]`: the mean over its `masked` positions of KL(x̂_0 ‖ the previous x̂_0)
    (`probs`, `previous` `[B, n, N]`); 0 for a row without masks."""
    kl = kl_divergence(probs, previous)
    count = masked.sum(1)
    return torch.where(masked, kl, 0.0).sum(1) / count.clamp(min=1)


class LatentRefinement:
    """Latent Refinement Decoding (Zhu et al., 2025) as a rule over one block.

    Phase 1 (latent refinement): no token is committed; each masked position is read as the
    soft mask ẽ of its last x̂_0 (`soft_embeddings`: the mask embedding mixed with the
    expected embedding of the top-p tokens, weight `mix`), fed back to the model (tokens =
    the mask, `input_embeddings` = ẽ − e_mask), until the predictions settle — the mean KL
    between successive x̂_0 over a row's masks (`prediction_change`) is below `epsilon` for
    every row — or after `refine_steps` soft passes. Phase 2 (predictive feedback): each
    step commits the confident masks (`_confident`, Fast-dLLM's rule at `threshold`, at
    least one per row) and keeps feeding the rest as soft masks; a row whose predictions
    changed by less than `epsilon` since the last step commits all its masks. With
    `mix` = 0 phase 1 is skipped (a soft mask is the mask) and nothing is fed, and with
    `epsilon` = 0 too this is the `confidence` sampler step for step.
    """

    def __init__(
        self,
        inputs: RuleInputs,
        mix: float,
        top_p: float,
        epsilon: float,
        refine_steps: int,
        threshold: float,
    ) -> None:
        self.mask_id, self.mix, self.top_p = inputs.objective.mask_id, mix, top_p
        self.epsilon, self.refine_steps, self.threshold = epsilon, refine_steps, threshold
        self.temperature, self.generator = inputs.temperature, inputs.generator
        self.embeddings = inputs.model.embed.weight.detach()
        self.previous: Tensor | None = None
        self.refined: int | None = 0

    def __call__(
        self, tokens: Tensor, probs: Tensor, free: Tensor, step: int, steps: int
    ) -> Tensor:
        if step == 0:  # a new block
            self.previous, self.refined = None, 0
        masked = free & (tokens == self.mask_id)
        change = None if self.previous is None else prediction_change(probs, self.previous, masked)
        self.previous = probs
        if self.mix > 0 and self.refined is not None:
            self.refined += 1
            settled = change is not None and bool((change < self.epsilon).all())
            if not settled and self.refined <= self.refine_steps:
                return tokens
            self.refined = None
        proposal, confidence = _candidates(probs, self.temperature, self.generator)
        chosen = _confident(tokens, confidence, free, self.mask_id, self.threshold)
        if change is not None:
            chosen = chosen | (masked & (change < self.epsilon)[:, None])
        return torch.where(chosen, proposal, tokens)

    def feed(self, tokens: Tensor, probs: Tensor, free: Tensor) -> Tensor | None:
        """ẽ − e_mask at the block's remaining masks `[B, n, d]` (zero elsewhere), or None."""
        masked = free & (tokens == self.mask_id)
        if self.mix == 0 or not masked.any():
            return None
        soft = soft_embeddings(probs, self.embeddings, self.mask_id, self.mix, self.top_p)
        soft = (soft - self.embeddings[self.mask_id].to(soft.dtype)) * masked[..., None]
        return soft.to(self.embeddings.dtype)


def _absorbing(objective: Diffusion, sampler: str) -> None:
    if objective.noise != "absorbing":
        raise ConfigError(f"the {sampler!r} sampler needs absorbing noise, got {objective.noise}")


@dataclass(frozen=True)
class RuleInputs:
    """What a diffusion sampler's rule is built from: the bound objective, the generator
    seeded by `seed`, the shared `temperature` and guidance options, and the model."""

    objective: Diffusion
    generator: torch.Generator | None
    temperature: float
    guidance: Guidance | None
    model: Model


RuleFactory = Callable[..., Rule]


def diffusion_sampler(
    *,
    absorbing: bool = False,
    until_clean: bool = False,
    stop_when_clean: bool | Callable[[Diffusion], bool] = False,
    whole_step_guidance: bool = False,
    hyperschedule: bool = False,
    **defaults: Any,
) -> Callable[[RuleFactory], Callable[..., Generation]]:
    """Decorator: a diffusion sampler from `make(inputs: RuleInputs, *, own options) -> Rule`.

    The sampler takes the shared denoising options (`defaults` replaces their defaults) and
    `make`'s own, and runs `denoise` with the rule. `absorbing`: the rule needs absorbing
    noise. `until_clean`: steps run until the block has no mask (no `steps` option);
    `stop_when_clean` (or a function of the objective): a block's steps end once it is
    clean, for rules that never touch a clean token (see `denoise`).
    `whole_step_guidance`: the rule takes the unnormalized guidance rule (`Guidance`).
    `hyperschedule`: the rule takes per-position `levels` (see `denoise`), so the sampler
    follows an objective's non-flat hyperschedule; other samplers refuse one.
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
            if not (hyperschedule or objective.hyperschedule.flat):
                supported = [e.name for e in SAMPLERS.entries() if e.declared("hyperschedule")]
                raise ConfigError(
                    f"the {make.__name__!r} sampler shares one t over the canvas; a "
                    f"{objective.hyperschedule.kind} hyperschedule is sampled by {supported}"
                )
            generator = seed_generator(model, options.seed, "diffusion")
            guidance = None
            if options.guidance is not None:
                guidance = Guidance(
                    options.guidance, options.guidance_schedule, options.guidance_rule
                )
                if guidance.rule == "unnormalized" and not whole_step_guidance:
                    raise ConfigError(
                        f"the unnormalized guidance rule tilts the reverse step's own "
                        f"probabilities; the {make.__name__!r} sampler takes only 'normalized'"
                    )
            inputs = RuleInputs(objective, generator, options.temperature, guidance, model)
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
                guidance=guidance,
                generator=generator,
            )

        # the sampler's own options are those of `make`, after its `inputs`
        leading = list(inspect.signature(sampler).parameters.values())[:4]
        own = list(inspect.signature(make).parameters.values())[1:]
        sampler.__signature__ = inspect.Signature([*leading, *own])  # type: ignore[attr-defined]
        functools.update_wrapper(sampler, make)
        sampler.paradigm = "diffusion"  # type: ignore[attr-defined]  (read by the registry)
        sampler.hyperschedule = hyperschedule  # type: ignore[attr-defined]
        return shares(*names, **defaults)(sampler)

    return decorate


@SAMPLERS.register("ancestral")
@diffusion_sampler(
    stop_when_clean=lambda objective: objective.noise == "absorbing",
    whole_step_guidance=True,
    hyperschedule=True,
)
def ancestral(inputs: RuleInputs) -> Rule:
    """The reverse process of the objective's noise (MDLM / UDLM ancestral sampling).

    Under the objective's hyperschedule each position steps between its own levels τ_i(t)
    on the grid t_k = 1 − k/K (`denoise`); K (`steps`) defaults to
    `Hyperschedule.sampling_steps` of the canvas: L for flat (the number of new tokens,
    as before), n·w for a staircase of n blocks of width w (each block ramps in w steps),
    L − 1 + w for a sliding window of width w (a ramp starts each step and lasts w steps).
    Staircase width 1 with K = L commits position k at step k, as AR decoding; steps that
    would move only prompt positions are skipped and cost nothing. Example: a sliding
    window of width 2 over a prompt of 2 and 6 new tokens runs K = 8 − 1 + 2 = 9 grid
    steps, of which the first two move only the prompt:

        objective = build_objective(
            "masked_diffusion", 7, hyperschedule={"kind": "sliding", "width": 2}
        )
        out = generate(model, [[1, 2]], max_new_tokens=6, sampler="ancestral",
                       objective=objective)
        assert out.nfe <= 7  # position i moves during steps i, i + 1; clean after

    At temperature 0 the tokens are greedy (`ancestral_rule`).
    """
    return ancestral_rule(
        inputs.objective, inputs.generator, inputs.guidance, temperature=inputs.temperature
    )


@SAMPLERS.register("confidence")
@diffusion_sampler(absorbing=True, until_clean=True, hyperschedule=True, temperature=0.0)
def confidence(inputs: RuleInputs, *, threshold: float = 0.9) -> Rule:
    """Fast-dLLM: unmask every position more confident than `threshold`, at least one per
    step, until the block is clean.

    Under a non-flat hyperschedule the steps follow its natural grid (`denoise`), only
    positions whose window has opened may be unmasked, and each is unmasked at the latest
    when its level reaches 0 (`confidence_rule`): a staircase of width 1 is greedy AR
    decoding."""
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


@SAMPLERS.register("lrd")
@diffusion_sampler(absorbing=True, until_clean=True, temperature=0.0)
def lrd(
    inputs: RuleInputs,
    *,
    mix: float = 0.2,
    top_p: float = 0.9,
    epsilon: float = 1e-3,
    refine_steps: int = 4,
    threshold: float = 0.9,
) -> Rule:
    """Latent Refinement Decoding: masks read as soft mixtures of the mask embedding and the
    top-`top_p` predicted tokens' embeddings (weight `mix`), refined for up to `refine_steps`
    passes until successive predictions differ by less than `epsilon` (mean KL, nats), then
    confident tokens (above `threshold`) committed step by step (`LatentRefinement`)."""
    checks = [
        (0 <= mix <= 1, f"lrd mix must lie in [0, 1], got {mix}"),
        (0 < top_p <= 1, f"lrd top_p must lie in (0, 1], got {top_p}"),
        (epsilon >= 0, f"lrd epsilon must be >= 0, got {epsilon}"),
        (refine_steps >= 0, f"lrd refine_steps must be >= 0, got {refine_steps}"),
        (0 <= threshold <= 1, f"lrd threshold must lie in [0, 1], got {threshold}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    return LatentRefinement(inputs, mix, top_p, epsilon, refine_steps, threshold)

"""A deep equilibrium (DEQ) layer (Bai, Kolter & Koltun, 2019): the hidden state is the fixed
point of one weight-tied layer, found by a solver, differentiated implicitly.

The model's blocks (`ModelConfig.deq.layers`), as one map Blocks(h) = h + R(h) with R the
sum of the blocks' residual branches (each block is pre-norm: every branch reads an RMSNorm of
its input), and the token embeddings x `[B, T, D]` (plus any input embeddings) define

    f(z, x) = x̂ + R(z) = x̂ + Blocks(z) − z,      x̂ = RMSNorm_in(x)
    z* = f(z*, x)                                  (the hidden state, `[B, T, D]`)

then z* goes through the model's final norm and head as usual. Why this f:

- Bounded, so a fixed point exists: every branch reads a normalised input, so ‖R(z)‖ ≤ C(θ)
  for every z and f maps the ball of radius ‖x̂‖ + C into itself (Brouwer). The pre-norm
  stack z ↦ Blocks(z + x) alone has no bounded fixed point (z keeps its whole residual
  stream and grows by R each pass).
- Contractive at initialisation: ∂f/∂z = ∂R/∂z is the product of small output projections
  (std/√(2 n_layers)) and the branch norms' Jacobians at ‖z‖ ≈ ‖x̂‖ = √D (the injection norm
  makes the scale of z independent of the embeddings' init std), so a solver needs only a few
  iterations when training starts. The post-norm form RMSNorm(Blocks(z + x)) of the DEQ
  transformer is bounded too, but near initialisation it is close to z ↦ normalise(z + x),
  whose Jacobian is almost the identity on the sphere: plain iteration then creeps towards
  the fixed point by a factor of about 1/(1 + ‖x‖/‖z‖) ≈ 0.98 per step (measured at
  d_model 64, T 64, init: 244 plain iterations, or 57 Anderson ones, to reach tol 1e-3,
  against 3 for this f).
- The input is injected at every evaluation (x̂ is outside R), so z* depends on x however
  deep the equilibrium is.

Forward: z* is solved under `torch.no_grad()` (`seqlab.implicit.solvers`, starting from x̂),
then f is evaluated once more at z*, which gives the output z = f(z*) and, in decoding, the
layer states. Backward (`deq.backward`):

- implicit: that last evaluation runs with autograd from a detached z*, and a hook on z
  replaces the incoming gradient g by the solution u of the adjoint fixed point
  u = J_f(z*)ᵀ u + g (the same solver, each step one vector-Jacobian product through the
  retained graph of the last evaluation), so the parameters and x receive
  uᵀ ∂f/∂(θ, x) = gᵀ (I − J_f)⁻¹ ∂f/∂(θ, x), the implicit-function-theorem gradient. The
  memory is one evaluation of f whatever the number of iterations.
- phantom (Geng et al., 2021): from the detached z*, `phantom_steps` damped steps
  z ← λ f(z) + (1 − λ) z with autograd; the gradient through them approximates the implicit
  one (memory of `phantom_steps` evaluations).
- unrolled: the solve itself is plain iteration with autograd (backpropagation through every
  iteration; memory grows with them): the reference the implicit gradient is tested against.

Decoding: f's blocks are causal, so z* is too, and a decode step or a prefill solves only the
new positions: every evaluation calls the blocks with the same earlier state (a value, never
mutated), and the states the final evaluation returns become the new state. Non-causal layouts
work the same way (f simply runs in that layout).

Jacobian regularisation (`deq.jacobian_penalty` γ > 0; Bai, Koltun & Kolter, 2021): without
it the equilibrium tends to lose stability as training goes on (the solver needs more and
more iterations and stops converging); the training loss then gains γ ‖J_f(z*)‖_F² / (B·T·D),
estimated with one Gaussian probe per step by a central difference of f (two more
evaluations, their own graph, so the adjoint hook never sees them), recorded as the
auxiliary loss `aux_jacobian`.

Reports (`seqlab.auxiliary.record_metric`): `deq_iterations`, `deq_residual` (the largest
per-sample relative residual), `deq_unconverged` (1 when the solve missed `tol`) and the same
with `deq_backward_` for the adjoint solve. Unconverged solves are also counted on the module
(`unconverged`, `backward_unconverged`), and the first one logs a warning. `iterations_used`
(the running mean of forward evaluations in training, buffers saved with the model) gives
the model's FLOPs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor, nn

from seqlab.auxiliary import record_auxiliary_loss, record_metric
from seqlab.config import DEQConfig
from seqlab.implicit.solvers import SolverInfo, fixed_point, solve

logger = logging.getLogger(__name__)

# the finite-difference step of the Jacobian probe, relative to the RMS of z* (at least 1)
JACOBIAN_STEP = 1e-2
# h [B, T, D] -> (Blocks(h) [B, T, D], the blocks' new states): the block stack with the
# earlier states, layout and positions bound
Stack = Callable[[Tensor], tuple[Tensor, object]]


class DEQ(nn.Module):
    """The equilibrium z* = f(z*, x) of f(z, x) = RMSNorm(x) + Blocks(z) − z (see the module
    docstring); `forward(stack, x) -> (z, states)`."""

    def __init__(self, config: DEQConfig, d_model: int, *, eps: float) -> None:
        super().__init__()
        self.config = config
        self.injection = nn.RMSNorm(d_model, eps=eps)
        self.register_buffer("mean_iterations", torch.zeros(()))
        self.register_buffer("solves", torch.zeros((), dtype=torch.long))
        self.register_buffer("unconverged", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer(
            "backward_unconverged", torch.zeros((), dtype=torch.long), persistent=False
        )
        self._warned = False

    def forward(self, stack: Stack, x: Tensor) -> tuple[Tensor, object]:
        config = self.config
        x_hat = self.injection(x)

        def layer(z: Tensor) -> tuple[Tensor, object]:
            blocks, states = stack(z)
            return x_hat + blocks - z, states

        def f(z: Tensor) -> Tensor:
            return layer(z)[0]

        if config.backward == "unrolled" and torch.is_grad_enabled():
            z_star, info = fixed_point(f, x_hat, max_iter=config.max_iter, tol=config.tol)
        else:
            with torch.no_grad():
                z_star, info = solve(
                    config.solver,
                    f,
                    x_hat.detach(),
                    max_iter=config.max_iter,
                    tol=config.tol,
                    memory=config.memory,
                )
        self._report(info, backward=False)
        if not torch.is_grad_enabled() or config.backward == "unrolled":
            return layer(z_star)
        z_star = z_star.detach()
        if config.jacobian_penalty > 0 and self.training:
            self._penalise_jacobian(f, z_star)
        if config.backward == "phantom":
            z, damping = z_star, config.phantom_damping
            for _ in range(config.phantom_steps):
                fz, states = layer(z)
                z = damping * fz + (1 - damping) * z
            return z, states
        z_in = z_star.requires_grad_()
        z, states = layer(z_in)
        if z.requires_grad:
            self._attach_adjoint(z, z_in)
        return z, states

    def _penalise_jacobian(self, f: Callable[[Tensor], Tensor], z_star: Tensor) -> None:
        """Record γ ‖J_f(z*) ε‖² / (B·T·D), ε ~ N(0, I) (E‖Jε‖² = ‖J‖_F²), as the auxiliary loss
        "jacobian", with Jε by a central difference (f(z* + hε) − f(z* − hε)) / 2h: two more
        evaluations of f under autograd, so its gradient reaches θ by an ordinary backward
        through any mixer (a double backward would need every kernel to be twice
        differentiable, which fused attention and the hand-written scan backwards are not)."""
        probe = torch.randn_like(z_star)
        step = JACOBIAN_STEP * z_star.detach().pow(2).mean().sqrt().clamp_min(1.0)
        jvp = (f(z_star + step * probe) - f(z_star - step * probe)) / (2 * step)
        penalty = self.config.jacobian_penalty * jvp.pow(2).sum() / jvp.numel()
        record_auxiliary_loss(self, "jacobian", penalty)

    def _attach_adjoint(self, z: Tensor, z_in: Tensor) -> None:
        """Make the gradient reaching z = f(z_in) the adjoint solution u = J_f(z_in)ᵀ u + g."""
        config = self.config

        def adjoint(grad: Tensor) -> Tensor:
            handle.remove()

            def step(u: Tensor) -> Tensor:
                (vjp,) = torch.autograd.grad(z, z_in, u, retain_graph=True)
                return vjp + grad

            with torch.no_grad():
                u, info = solve(
                    config.solver,
                    step,
                    grad,
                    max_iter=config.backward_max_iter,
                    tol=config.backward_tol,
                    memory=config.memory,
                )
            self._report(info, backward=True)
            return u

        handle = z.register_hook(adjoint)

    def _report(self, info: SolverInfo, *, backward: bool) -> None:
        prefix = "deq_backward_" if backward else "deq_"
        record_metric(self, f"{prefix}iterations", float(info.iterations))
        record_metric(self, f"{prefix}residual", info.max_residual)
        record_metric(self, f"{prefix}unconverged", float(not info.converged))
        if not backward and self.training:
            self.solves += 1
            self.mean_iterations += (info.iterations - self.mean_iterations) / self.solves
        if info.converged:
            return
        counter = self.backward_unconverged if backward else self.unconverged
        counter += 1
        if not self._warned:
            self._warned = True
            logger.warning(
                "a DEQ %s solve did not converge: relative residual %.3g > tol %g after %d "
                "iterations (counted in the metric %sunconverged; later ones are counted "
                "without this warning)",
                "backward" if backward else "forward",
                info.max_residual,
                self.config.backward_tol if backward else self.config.tol,
                info.iterations,
                prefix,
            )

    def iterations_used(self) -> float:
        """Evaluations of f per training forward: the solver's mean iterations over the
        training forwards so far (`max_iter` before any), then the evaluations after the
        solve (the final one at z*, or the phantom steps) and the two of the Jacobian
        probe."""
        config = self.config
        after = config.phantom_steps if config.backward == "phantom" else 1
        after += 2 if config.jacobian_penalty > 0 else 0
        solver = config.max_iter if int(self.solves) == 0 else float(self.mean_iterations)
        return float(solver) + after

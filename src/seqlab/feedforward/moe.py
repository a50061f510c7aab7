"""Mixture of experts: top-k routed SwiGLU experts plus shared ones, with the Switch
load-balancing loss; `moe_reference` is the dense form it must equal."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seqlab.auxiliary import record_auxiliary_loss
from seqlab.feedforward.swiglu import SwiGLU


class MoE(nn.Module):
    """Top-k routed SwiGLU experts (Mixtral) with always-active shared experts (DeepSeekMoE).

    For each token x [d_model], with E = `experts` and S its top-k experts:

        p = softmax(W_r x)                          router probabilities [E]
        g_e = p_e / Σ_{j∈S} p_j   (e ∈ S)           gates (top_k = 1: g_e = p_e, as Switch,
                                                    so the loss still reaches the router)
        y = Σ_{e∈S} g_e · SwiGLU_e(x) + SwiGLU_shared(x)

    Every expert has hidden width `hidden`; the `shared` experts are one SwiGLU of width
    shared · hidden (the same function as that many experts summed), unweighted. Dispatch
    sorts the N·k (token, expert) pairs by expert and runs each expert once on its own tokens
    (index_select, then index_add of the gated outputs): no capacity limit, no dropped token,
    no expert runs on a token it was not chosen for. Shapes: x [..., d_model] -> y [..., d_model].

    Load balancing (Switch Transformer): L = E · Σ_e f_e · P_e, with f_e the fraction of the
    N·k assignments sent to expert e and P_e its mean router probability; L = 1 at perfect
    balance. `balance_weight · L` is recorded as the auxiliary loss "balance" while autograd
    is on (training).
    """

    def __init__(
        self,
        d_model: int,
        hidden: int,
        *,
        experts: int,
        top_k: int,
        shared: int,
        balance_weight: float,
    ) -> None:
        super().__init__()
        self.top_k = top_k
        self.balance_weight = balance_weight
        self.router = nn.Linear(d_model, experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(d_model, hidden) for _ in range(experts))
        self.shared = SwiGLU(d_model, shared * hidden) if shared else None

    @property
    def records_auxiliary_loss(self) -> bool:
        return self.balance_weight > 0

    def forward(self, x: Tensor) -> Tensor:
        tokens = x.reshape(-1, x.shape[-1])  # (N, d)
        probs, experts, gates = route(self.router(tokens), self.top_k)
        if torch.is_grad_enabled() and self.balance_weight:
            loss = self.balance_weight * balance_loss(probs, experts)
            record_auxiliary_loss(self, "balance", loss)
        y = self._dispatch(tokens, experts, gates.to(x.dtype))
        if self.shared is not None:
            y = y + self.shared(tokens)
        return y.reshape(x.shape)

    def _dispatch(self, tokens: Tensor, experts: Tensor, gates: Tensor) -> Tensor:
        """Σ_{e∈S} g_e · SwiGLU_e(x) for tokens (N, d), experts and gates (N, k)."""
        chosen = experts.reshape(-1)  # (N·k,)
        order = chosen.argsort(stable=True)
        source = order // self.top_k  # the token of each assignment, grouped by expert
        counts = torch.bincount(chosen, minlength=len(self.experts)).tolist()
        groups = tokens.index_select(0, source).split(counts)
        pairs = zip(self.experts, groups, strict=True)
        outputs = [expert(group) for expert, group in pairs if len(group)]
        weighted = torch.cat(outputs) * gates.reshape(-1)[order, None]  # (N·k, d)
        return torch.zeros_like(tokens).index_add(0, source, weighted)

    def init_weights(self, std: float, out_std: float) -> None:
        nn.init.normal_(self.router.weight, std=std)
        for expert in [*self.experts, *([self.shared] if self.shared is not None else [])]:
            expert.init_weights(std, out_std)

    def inactive_params(self) -> int:
        """Parameters a token does not use: the experts it is not routed to."""
        per_expert = sum(p.numel() for p in self.experts[0].parameters())
        return (len(self.experts) - self.top_k) * per_expert


def route(logits: Tensor, top_k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Router probabilities p = softmax(logits) [..., E] (in at least float32), each token's
    top-k experts [..., k] and their gates [..., k] (renormalised over the k when k > 1)."""
    probs = torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    top, experts = probs.topk(top_k, dim=-1)
    gates = top / top.sum(-1, keepdim=True) if top_k > 1 else top
    return probs, experts, gates


def balance_loss(probs: Tensor, experts: Tensor) -> Tensor:
    """E · Σ_e f_e · P_e for router probabilities [N, E] and chosen experts [N, k]: f_e the
    fraction of the N·k assignments to e (no gradient), P_e = mean_n p_{n,e}."""
    n_experts = probs.shape[-1]
    counts = torch.bincount(experts.reshape(-1), minlength=n_experts)
    fraction = counts.to(probs.dtype) / experts.numel()
    return n_experts * (fraction * probs.mean(0)).sum()


def moe_reference(moe: MoE, x: Tensor) -> Tensor:
    """The dense form of `MoE.forward`: every expert on every token, weighted by the sparse
    gates (zero outside each token's top k). x [..., d_model] -> [..., d_model]."""
    probs, experts, gates = route(moe.router(x), moe.top_k)
    weights = torch.zeros_like(probs).scatter(-1, experts, gates).to(x.dtype)  # (..., E)
    y = sum(weights[..., e, None] * expert(x) for e, expert in enumerate(moe.experts))
    return y if moe.shared is None else y + moe.shared(x)

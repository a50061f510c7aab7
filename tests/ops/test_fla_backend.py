"""`ops.backend: fla`: the dispatch of the chunked linear-attention and delta-rule ops to
flash-linear-attention's kernels. On CPU: the errors, and the argument mapping through a
fake `fla` package that runs seqlab's step-by-step references with fla's signatures. On a
GPU (`gpu` marker): the real kernels against seqlab's, forward and backward."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from seqlab.config import ExperimentConfig, from_dict
from seqlab.errors import ConfigError
from seqlab.ops import backend
from seqlab.ops.backend import active_backend, ops_backend
from seqlab.ops.delta_rule import delta_rule, gated_delta_rule
from seqlab.ops.linear_attention import gated_linear_attention
from seqlab.train import train
from tests.helpers import tiny_config, write_corpus

REQUIRE_CUDA = backend.require_cuda


class FakeFla:
    """`fla.ops.{simple_gla,gla,delta_rule,gated_delta_rule}` with fla's signatures,
    computed by seqlab's recurrent references; records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def _record(self, name: str, **arguments) -> None:
        self.calls.append((name, arguments))

    @staticmethod
    def _outputs(result, output_final_state):
        o, final = result
        return o, final if output_final_state else None

    def chunk_simple_gla(
        self,
        q,
        k,
        v,
        g=None,
        g_gamma=None,
        scale=None,
        initial_state=None,
        output_final_state=False,
        state_v_first=False,
        cu_seqlens=None,
        **kwargs,
    ):
        self._record("chunk_simple_gla", g=g, scale=scale, initial_state=initial_state)
        assert g_gamma is None and not state_v_first and cu_seqlens is None and not kwargs
        result = gated_linear_attention(
            q,
            k,
            v,
            g,
            scale=scale,
            initial_state=initial_state,
            output_final_state=True,
            mode="recurrent",
        )
        return self._outputs(result, output_final_state)

    def chunk_gla(
        self,
        q,
        k,
        v,
        g,
        scale=None,
        initial_state=None,
        output_final_state=False,
        state_v_first=False,
        cu_seqlens=None,
    ):
        self._record("chunk_gla", g=g, scale=scale, initial_state=initial_state)
        assert q.shape == k.shape == g.shape and not state_v_first and cu_seqlens is None
        assert initial_state is None or initial_state.dtype == torch.float32
        result = gated_linear_attention(
            q,
            k,
            v,
            g,
            scale=scale,
            initial_state=initial_state,
            output_final_state=True,
            mode="recurrent",
        )
        return self._outputs(result, output_final_state)

    def chunk_delta_rule(
        self,
        q,
        k,
        v,
        beta,
        scale=None,
        initial_state=None,
        output_final_state=False,
        use_qk_l2norm_in_kernel=False,
        cu_seqlens=None,
        **kwargs,
    ):
        self._record("chunk_delta_rule", scale=scale, l2norm=use_qk_l2norm_in_kernel)
        assert q.dtype == k.dtype == v.dtype != torch.float32 and beta.dim() == 3
        result = delta_rule(
            q,
            k,
            v,
            beta,
            scale=scale,
            initial_state=initial_state,
            output_final_state=True,
            mode="recurrent",
        )
        return self._outputs(result, output_final_state)

    def chunk_gated_delta_rule(
        self,
        q,
        k,
        v,
        g,
        beta,
        scale=None,
        initial_state=None,
        output_final_state=False,
        use_qk_l2norm_in_kernel=False,
        use_beta_sigmoid_in_kernel=False,
        allow_neg_eigval=False,
        state_v_first=False,
        cu_seqlens=None,
        **kwargs,
    ):
        self._record("chunk_gated_delta_rule", scale=scale, l2norm=use_qk_l2norm_in_kernel)
        assert not use_beta_sigmoid_in_kernel and not state_v_first and not kwargs
        result = gated_delta_rule(
            q,
            k,
            v,
            g,
            beta,
            scale=scale,
            initial_state=initial_state,
            output_final_state=True,
            mode="recurrent",
        )
        return self._outputs(result, output_final_state)


@pytest.fixture
def fake_fla(monkeypatch) -> FakeFla:
    fake = FakeFla()
    modules = {"fla": types.ModuleType("fla"), "fla.ops": types.ModuleType("fla.ops")}
    for name in ("simple_gla", "gla", "delta_rule", "gated_delta_rule"):
        module = types.ModuleType(f"fla.ops.{name}")
        setattr(module, f"chunk_{name}", getattr(fake, f"chunk_{name}"))
        modules[module.__name__] = module
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(backend, "require_cuda", lambda device: None)  # CPU tensors allowed
    return fake


def _inputs(dtype=torch.float32, gate="key", T=13, seed=0):
    generator = torch.Generator().manual_seed(seed)
    B, H, K, V = 2, 3, 4, 5

    def rand(*shape):
        return torch.randn(*shape, generator=generator)

    q, k, v = rand(B, T, H, K), F.normalize(rand(B, T, H, K), dim=-1), rand(B, T, H, V)
    gates = {
        "none": None,
        "head": F.logsigmoid(rand(B, T, H)),
        "key": F.logsigmoid(rand(B, T, H, K)),
    }
    beta = torch.sigmoid(rand(B, T, H)) * 2
    state = rand(B, H, K, V)
    return [x.to(dtype) for x in (q, k, v)], gates[gate], beta.to(dtype), state


@pytest.mark.parametrize(
    "gate, kernel",
    [("none", "chunk_simple_gla"), ("head", "chunk_simple_gla"), ("key", "chunk_gla")],
)
def test_linear_attention_maps_to_fla_with_the_same_arguments(fake_fla, gate, kernel):
    (q, k, v), g, _, state = _inputs(gate=gate)
    options = {"scale": 0.7, "initial_state": state.double(), "output_final_state": True}
    expected = gated_linear_attention(q, k, v, g, **options)
    with ops_backend("fla"):
        assert active_backend() == "fla"
        got = gated_linear_attention(q, k, v, g, **options)
    assert active_backend() == "torch"
    ((name, arguments),) = fake_fla.calls
    assert name == kernel and arguments["scale"] == 0.7
    assert arguments["g"] is g and arguments["initial_state"].dtype == torch.float32
    assert got[0].dtype == q.dtype and got[1].shape == (2, 3, 4, 5)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("gated", [False, True])
def test_delta_rules_map_to_fla_with_the_same_arguments(fake_fla, gated):
    (q, k, v), g, beta, state = _inputs(dtype=torch.bfloat16, gate="head")
    op = (lambda *x, **o: gated_delta_rule(*x[:3], g, x[3], **o)) if gated else delta_rule
    expected = op(q, k, v, beta, initial_state=state, output_final_state=False)
    with ops_backend("fla"):
        o, final = op(q, k, v, beta, initial_state=state, output_final_state=False)
    ((name, arguments),) = fake_fla.calls
    assert name == ("chunk_gated_delta_rule" if gated else "chunk_delta_rule")
    assert arguments == {"scale": 4**-0.5, "l2norm": False}
    assert final is None and o.dtype == torch.bfloat16
    torch.testing.assert_close(o.float(), expected[0].float(), rtol=2e-2, atol=2e-2)


def test_reference_mode_chunk_states_and_the_torch_backend_never_call_fla(fake_fla):
    (q, k, v), g, beta, _ = _inputs()
    gated_linear_attention(q, k, v, g)
    delta_rule(q, k, v, beta)
    with ops_backend("fla"):
        gated_linear_attention(q, k, v, g, mode="recurrent")
        gated_linear_attention(q, k, v, g, output_chunk_states=True, chunk_size=4)
        delta_rule(q, k, v, beta, mode="recurrent")
        gated_linear_attention(q[:, :0], k[:, :0], v[:, :0], g[:, :0])
    assert fake_fla.calls == []


def test_fla_refuses_dtypes_its_kernels_do_not_take(fake_fla):
    (q, k, v), g, beta, _ = _inputs()
    with ops_backend("fla"):
        refused = "chunk_delta_rule takes bfloat16, float16 inputs, got float32"
        with pytest.raises(ConfigError, match=refused):
            delta_rule(q, k, v, beta)
        with pytest.raises(ConfigError, match="chunk_gla takes .* got float64"):
            gated_linear_attention(q.double(), k.double(), v.double(), g.double())
    assert fake_fla.calls == []


def test_asking_for_fla_without_the_package_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "fla", None)  # import fla fails, installed or not
    needed = r"needs flash-linear-attention \(pip install"
    with pytest.raises(ConfigError, match=needed) as err, ops_backend("fla"):
        pass
    assert "\n" not in str(err.value) and active_backend() == "torch"


def test_asking_for_fla_off_cuda_is_a_config_error(fake_fla, monkeypatch):
    monkeypatch.setattr(backend, "require_cuda", REQUIRE_CUDA)
    with (
        pytest.raises(ConfigError, match="fla runs on a CUDA device, got cpu"),
        ops_backend("fla", "cpu"),
    ):
        pass
    (q, k, v), g, _, _ = _inputs()
    with ops_backend("fla"), pytest.raises(ConfigError, match="CUDA device, got cpu"):
        gated_linear_attention(q, k, v, g)


def test_ops_backend_is_a_checked_config_key_and_training_refuses_fla_on_cpu(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="ops.backend must be one of torch, fla, got 'triton'"):
        from_dict(ExperimentConfig, {"ops": {"backend": "triton"}})
    monkeypatch.setitem(sys.modules, "fla", None)
    corpus = write_corpus(tmp_path / "corpus", files=2, lines=10)
    config = tiny_config(corpus, tmp_path / "cache", train={"steps": 1, "device": "cpu"})
    experiment = from_dict(ExperimentConfig, {**config, "ops": {"backend": "fla"}})
    with pytest.raises(ConfigError, match="needs flash-linear-attention"):
        train(experiment, tmp_path / "run", progress=False)


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.gpu
@pytest.mark.parametrize(
    "op, gate, dtype",
    [
        ("linear", "none", torch.float32),
        ("linear", "head", torch.float32),
        ("linear", "key", torch.float32),
        ("linear", "key", torch.bfloat16),
        ("delta", "none", torch.bfloat16),
        ("gated_delta", "head", torch.bfloat16),
    ],
)
def test_fla_kernels_equal_seqlabs_forward_and_backward(op, gate, dtype):
    import fla.ops  # noqa: F401 - the GPU suite needs flash-linear-attention installed

    (q, k, v), g, beta, state = _inputs(dtype=dtype, gate=gate, T=100)
    tensors = [x.cuda().requires_grad_() for x in (q, k, v, beta, state)]
    gate_tensor = None if g is None else g.cuda().requires_grad_()
    q, k, v, beta, state = tensors

    def run() -> tuple[torch.Tensor, ...]:
        options = {"scale": 0.6, "initial_state": state, "output_final_state": True}
        if op == "linear":
            return gated_linear_attention(q, k, v, gate_tensor, **options)
        if op == "delta":
            return delta_rule(q, k, v, beta, **options)
        return gated_delta_rule(q, k, v, gate_tensor, beta, **options)

    inputs = [x for x in (q, k, v, gate_tensor, beta, state) if x is not None]
    results = {}
    for name in ("torch", "fla"):
        with ops_backend(name, "cuda"):
            o, final = run()
        loss = (o.float() * torch.linspace(-1, 1, o.shape[-1], device="cuda")).sum()
        loss = loss + final.square().sum()
        grads = torch.autograd.grad(loss, inputs, allow_unused=True)
        results[name] = (o, final, grads)
    margin = 0.03 if dtype == torch.bfloat16 else 0.005
    assert _relative_error(results["fla"][0], results["torch"][0]) < margin
    assert _relative_error(results["fla"][1], results["torch"][1]) < margin
    for ours, theirs in zip(results["torch"][2], results["fla"][2], strict=True):
        if ours is not None:
            assert _relative_error(theirs, ours) < 3 * margin


def test_under_autocast_fla_gets_half_inputs_and_seqlabs_kernel_runs_in_float32(fake_fla):
    """The float32 guard wraps seqlab's kernel only: under bf16 autocast the fla dispatch sees
    the bfloat16 inputs its delta-rule kernels take (not upcast and then refused), while the
    torch backend computes and returns float32."""
    (q, k, v), _, beta, _ = _inputs(dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert delta_rule(q, k, v, beta)[0].dtype == torch.float32
        assert gated_linear_attention(q, k, v)[0].dtype == torch.float32
        assert fake_fla.calls == []
        with ops_backend("fla"):
            o, _ = delta_rule(q, k, v, beta)
    ((name, _),) = fake_fla.calls
    assert name == "chunk_delta_rule" and o.dtype == torch.bfloat16

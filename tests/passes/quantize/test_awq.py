"""AWQ: parent-output objective, exact folding of x / s, and error below RTN on a Llama-style block."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

import bitpress as bp
from bitpress.compiler.interpreter import run
from bitpress.compiler.pass_manager import sqnr_db
from bitpress.passes.quantize import awq

D, HEADS, KV, FF, T = 64, 4, 2, 128, 16


def _repeat_kv(x: torch.Tensor) -> torch.Tensor:
    """[b, kv, t, hd] -> [b, heads, t, hd], as transformers' repeat_kv."""
    b, kv, t, hd = x.shape
    return x[:, :, None].expand(b, kv, HEADS // KV, t, hd).reshape(b, HEADS, t, hd)


class LlamaBlock(torch.nn.Module):
    """Pre-norm decoder block: RMSNorm, grouped-query attention (4 heads, 2 kv heads), SwiGLU MLP."""

    def __init__(self) -> None:
        super().__init__()
        hd = D // HEADS
        self.input_layernorm = torch.nn.RMSNorm(D)
        self.q_proj = torch.nn.Linear(D, D, bias=False)
        self.k_proj = torch.nn.Linear(D, KV * hd, bias=False)
        self.v_proj = torch.nn.Linear(D, KV * hd, bias=False)
        self.o_proj = torch.nn.Linear(D, D, bias=False)
        self.post_attention_layernorm = torch.nn.RMSNorm(D)
        self.gate_proj = torch.nn.Linear(D, FF, bias=False)
        self.up_proj = torch.nn.Linear(D, FF, bias=False)
        self.down_proj = torch.nn.Linear(FF, D, bias=False)
        with torch.no_grad():  # activation outliers in a few channels, as in real LLMs
            for norm in (self.input_layernorm, self.post_attention_layernorm):
                norm.weight.mul_(torch.where(torch.rand(D, generator=torch.Generator().manual_seed(5)) < 0.05, 10.0, 1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, hd = x.shape[0], x.shape[1], D // HEADS
        h = self.input_layernorm(x)
        q = self.q_proj(h).reshape(b, t, HEADS, hd).transpose(1, 2)
        k, v = (_repeat_kv(f(h).reshape(b, t, KV, hd).transpose(1, 2)) for f in (self.k_proj, self.v_proj))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o_proj(a.transpose(1, 2).reshape(b, t, D))
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([LlamaBlock(), LlamaBlock()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def _batches(seed: int, n: int) -> list[tuple[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(2, T, D, generator=g),) for _ in range(n)]


@pytest.fixture(scope="module")
def net() -> Net:
    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture(scope="module")
def graph(net: Net):  # type: ignore[no-untyped-def]
    return bp.compile(net, _batches(0, 1)[0], target="torch", quiet=True).graph


def _linears(g):  # type: ignore[no-untyped-def]
    return [n for n in g.nodes if n.op == "linear"]


def test_parent_region_reaches_the_next_layers(graph) -> None:  # type: ignore[no-untyped-def]
    lin = {n.name.split(".")[-1] + n.name.split(".")[1]: n for n in _linears(graph)}
    qkv = [lin["q_proj0"], lin["k_proj0"], lin["v_proj0"]]
    assert awq.parent_region(graph, qkv).parent == "layers.0.o_proj"
    assert awq.parent_region(graph, [lin["gate_proj0"], lin["up_proj0"]]).parent == "layers.0.down_proj"
    # o_proj and down_proj feed a residual add: their own outputs are the objective
    assert awq.parent_region(graph, [lin["o_proj0"]]).parent == "self"
    assert awq.parent_region(graph, [lin["down_proj1"]]).parent == "self"


def test_scales_fold_exactly(graph) -> None:  # type: ignore[no-untyped-def]
    """With the layers left in float, the scaled and folded graph computes the same function."""
    g = graph.clone()
    cal, test = _batches(1, 4), _batches(2, 2)
    ref = [run(g, b)[0] for b in test]
    events: dict[str, str] = {}

    def plan(n, st):  # type: ignore[no-untyped-def]
        w = n.inputs[1].value.float()
        return types.SimpleNamespace(qw=types.SimpleNamespace(dequantize=lambda: w))

    awq.awq_sequential(g, _linears(g), cal, spec=lambda n: (3, 32, False), plan=plan, explain=lambda n, why: events.setdefault(n.name, why))
    g.verify()
    for r, b in zip(ref, test, strict=True):
        torch.testing.assert_close(run(g, b)[0], r, rtol=1e-4, atol=1e-5)
    assert "folded into" in events["layers.0.q_proj"]  # the RMSNorm weight took 1/s
    assert "output rows of layers.0.up_proj" in events["layers.0.down_proj"]
    # o_proj (grouped-query attention: v_proj cannot absorb it) gets an explicit mul only if scaled
    muls = [n for n in g.nodes if ".input_scale" in n.name]
    assert len(muls) == sum("folded into mul" in why for name, why in events.items() if name.endswith("o_proj"))


@pytest.mark.parametrize("bits", [4, 3])
def test_awq_beats_rtn_on_the_block_output(net: Net, bits: int) -> None:
    cal, test = _batches(1, 8), _batches(2, 4)
    ref = torch.cat([net(*b) for b in test])

    def held_out(method: str) -> float:
        q = bp.passes.Quantize(method=method, bits=bits, group_size=32, weight_clip="minmax")
        cm = bp.compile(net, cal[0], passes=[q], target="torch", calibration=cal, quiet=True)
        return sqnr_db(ref, torch.cat([cm(*b) for b in test]))

    rtn, awq_db = held_out("rtn"), held_out("awq")
    assert awq_db > rtn + 0.2, (rtn, awq_db)

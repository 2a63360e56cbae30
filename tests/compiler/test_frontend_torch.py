"""torch.export -> IR: small models of each family and the three real models match eager torch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bitpress.compiler.frontend import UnsupportedOpError, import_module
from bitpress.compiler.interpreter import run


def check(model: nn.Module, *inputs: torch.Tensor, atol: float = 1e-5) -> None:
    model = model.eval()
    g = import_module(model, inputs)
    g.verify()
    with torch.no_grad():
        ref = model(*inputs)
    out = run(g, inputs, check_types=True)
    refs = ref if isinstance(ref, tuple) else (ref,)
    assert len(out) == len(refs)
    for o, r in zip(out, refs, strict=True):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=atol)


def test_mlp() -> None:
    check(nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Dropout(0.1), nn.Linear(32, 4), nn.LogSoftmax(-1)), torch.randn(3, 16))


class ResCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.b2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 2 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.b1(self.c1(x)))
        y = y + torch.nn.functional.silu(self.b2(self.c2(y)))
        y = torch.cat([nn.functional.max_pool2d(y, 2), nn.functional.avg_pool2d(y, 2)], dim=1)
        y = nn.functional.adaptive_avg_pool2d(y, (4, 4))
        return self.fc(torch.flatten(y, 1))


def test_residual_cnn() -> None:
    m = ResCNN().eval()
    with torch.no_grad():
        for b in (m.b1, m.b2):
            b.running_mean.uniform_(-1, 1)
            b.running_var.uniform_(0.5, 2)
    check(m, torch.randn(2, 3, 16, 16))


def test_transformer_encoder_layer() -> None:
    layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True, dropout=0.0)
    check(layer, torch.randn(2, 10, 32), atol=1e-5)


class TinyDecoder(nn.Module):
    """Llama-style: embedding, RMS norm, rotary embeddings, causal attention with GQA, SiLU MLP."""

    def __init__(self, vocab: int = 50, d: int = 32, heads: int = 4, kv: int = 2) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.norm = nn.RMSNorm(d, eps=1e-6)
        self.q, self.k, self.v = (
            nn.Linear(d, d, bias=False),
            nn.Linear(d, d // heads * kv, bias=False),
            nn.Linear(d, d // heads * kv, bias=False),
        )
        self.o = nn.Linear(d, d, bias=False)
        self.up, self.gate, self.down = nn.Linear(d, 64, bias=False), nn.Linear(d, 64, bias=False), nn.Linear(64, d, bias=False)
        self.head = nn.Linear(d, vocab, bias=False)
        self.h, self.kv, self.hd = heads, kv, d // heads

    def rope(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[-2]
        inv = 1.0 / (10000 ** (torch.arange(0, self.hd, 2).float() / self.hd))
        ang = torch.outer(torch.arange(t).float(), inv)
        cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
        x1, x2 = x[..., : self.hd // 2], x[..., self.hd // 2 :]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        b, t = ids.shape
        x = self.emb(ids)
        h = self.norm(x)
        q = self.rope(self.q(h).view(b, t, self.h, self.hd).transpose(1, 2))
        k = self.rope(self.k(h).view(b, t, self.kv, self.hd).transpose(1, 2))
        v = self.v(h).view(b, t, self.kv, self.hd).transpose(1, 2)
        mask = torch.ones(t, t, dtype=torch.bool).tril()
        a = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, -1))
        h = self.norm(x)
        x = x + self.down(nn.functional.silu(self.gate(h)) * self.up(h))
        return self.head(x)


def test_llama_style_decoder() -> None:
    check(TinyDecoder(), torch.randint(0, 50, (2, 12)))


def test_unsupported_ops_are_listed_together() -> None:
    """Every offender in one line, with its node and module path, whatever its dtype."""

    class Bad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            spec = torch.fft.rfft(self.proj(x)).abs().sum(-1)  # complex64 in between
            return spec + torch.special.i0(x).sum(-1) + torch.bucketize(x, torch.tensor([0.0, 1.0])).sum(-1)

    with pytest.raises(UnsupportedOpError) as e:
        import_module(Bad(), (torch.randn(4, 8),))
    msg = str(e.value)
    assert msg.startswith("3 unsupported op use(s)")
    assert "aten._fft_r2c at node _fft_r2c (top level) produces torch.complex64" in msg
    assert "aten.i0" in msg and "aten.bucketize" in msg
    assert "\n" not in msg


def test_unsupported_op_names_its_module_path() -> None:
    class Inner(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.special.i0(x)

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Sequential(nn.Linear(4, 4), Inner())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.block(x)

    with pytest.raises(UnsupportedOpError, match=r"aten\.i0 .* at node i0 \(block\.1\)"):
        import_module(Outer(), (torch.randn(2, 4),))


def test_fashion_cnn_matches_eager() -> None:
    from bitpress.models.fashion_mnist import load_fashion_cnn

    check(load_fashion_cnn(), torch.randn(8, 1, 28, 28))


def test_minilm_matches_eager() -> None:
    from bitpress.models.minilm import SENTENCES, MiniLMEncoder, encode_batch, load_minilm

    m, tok = load_minilm()
    ids, mask = encode_batch(tok, SENTENCES[:2], seq_len=128)
    check(MiniLMEncoder(m), ids, mask)


@pytest.mark.slow
def test_smollm2_matches_eager() -> None:
    from bitpress.models.smollm2 import SmolLMLogits, load_smollm2
    from bitpress.models.text import english_text, token_windows

    m, tok = load_smollm2()
    (ids,) = token_windows(tok, english_text(), 32, 1)
    check(SmolLMLogits(m), ids)

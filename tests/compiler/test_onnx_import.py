"""ONNX -> IR: torch-exported models and single ONNX ops import and run in the interpreter as onnxruntime runs them.

The oracle here is onnxruntime on the original ONNX file (and eager torch for exported models).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from bitpress.compiler.frontend import FrontendError, UnsupportedOpError
from bitpress.compiler.frontend.onnx_import import import_onnx, supported_onnx_ops
from bitpress.compiler.interpreter import run


def ort_run(model: onnx.ModelProto | bytes, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    data = model if isinstance(model, bytes) else model.SerializeToString()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    return list(sess.run(None, {i.name: x.numpy() for i, x in zip(sess.get_inputs(), inputs)}))


def export(model: nn.Module, inputs: tuple[torch.Tensor, ...], **kw: Any) -> bytes:
    f = io.BytesIO()
    with warnings.catch_warnings():  # the tracer's TracerWarnings are torch's concern, not these tests'
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), inputs, f, dynamo=False, **kw)
    return f.getvalue()


def assert_matches_ort(data: bytes | onnx.ModelProto, inputs: tuple[torch.Tensor, ...], tol: float = 1e-5) -> Any:
    model = data if isinstance(data, onnx.ModelProto) else onnx.load_from_string(data)
    g = import_onnx(model, inputs)
    got = run(g, inputs, check_types=True)
    want = ort_run(data, inputs)
    assert len(got) == len(want)
    for o, w in zip(got, want, strict=True):
        wt = torch.from_numpy(np.array(w))
        assert o.shape == wt.shape
        assert o.dtype == wt.dtype, (o.dtype, wt.dtype)
        if wt.is_floating_point():
            torch.testing.assert_close(o, wt, rtol=tol, atol=tol, equal_nan=True)
        else:
            assert torch.equal(o, wt)
    return g


# ----------------------------------------------------------------------------- torch -> ONNX -> IR round trips


class Mlp(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Linear(16, 32), nn.GELU(), nn.Dropout(0.1), nn.Linear(32, 8), nn.SiLU(), nn.Linear(8, 4), nn.LogSoftmax(-1))


class ResCnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False)
        self.b2 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)
        for bn in (self.b1, self.b2):  # non-trivial statistics
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.b1(self.c1(x)))
        y = self.pool(y + torch.relu(self.b2(self.c2(y))))
        return self.fc(torch.flatten(self.avg(y), 1))


class Encoder(nn.Module):
    """One transformer encoder layer: fused QKV, masked SDPA, post-norm residuals, GELU MLP."""

    def __init__(self, d: int = 32, h: int = 4, ff: int = 64) -> None:
        super().__init__()
        self.h = h
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln1 = nn.LayerNorm(d)
        self.ff1 = nn.Linear(d, ff)
        self.ff2 = nn.Linear(ff, d)
        self.ln2 = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.h, d // self.h).transpose(1, 2) for z in (q, k, v))
        bias = (1.0 - mask[:, None, None, :].to(x.dtype)) * -1e4
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = self.ln1(x + self.proj(a.transpose(1, 2).reshape(b, t, d)))
        return self.ln2(x + self.ff2(F.gelu(self.ff1(x))))


def test_mlp_round_trip_imports_linear_layers_with_state_dict_names() -> None:
    m = Mlp()
    x = torch.randn(3, 16)
    g = assert_matches_ort(export(m, (x,)), (x,))
    torch.testing.assert_close(run(g, (x,))[0], m(x).detach(), rtol=1e-5, atol=1e-5)
    linears = [n for n in g.nodes if n.op == "linear"]
    assert len(linears) == 3
    assert [n.inputs[1].name for n in linears if n.inputs[1] is not None] == ["0.weight", "3.weight", "5.weight"]
    for n, layer in zip(linears, (m[0], m[3], m[5]), strict=True):
        assert n.inputs[1] is not None and n.inputs[2] is not None
        assert torch.equal(n.inputs[1].value, layer.weight.detach())  # stored [out, in], as torch has it
        assert torch.equal(n.inputs[2].value, layer.bias.detach())


def test_mlp_on_3d_input_fuses_matmul_add_into_linear() -> None:
    m = Mlp()
    x = torch.randn(2, 5, 16)
    g = assert_matches_ort(export(m, (x,)), (x,))
    linears = [n for n in g.nodes if n.op == "linear"]
    assert len(linears) == 3 and all(n.inputs[2] is not None for n in linears)
    assert not any(n.op in ("matmul", "add") for n in g.nodes)


def test_cnn_with_batch_norm_pooling_residual() -> None:
    m = ResCnn()
    x = torch.randn(2, 3, 12, 12)
    g = assert_matches_ort(export(m, (x,), do_constant_folding=False), (x,))
    ops = {n.op for n in g.nodes}
    assert {"conv2d", "batch_norm", "max_pool2d", "adaptive_avg_pool2d", "add", "linear"} <= ops
    torch.testing.assert_close(run(g, (x,))[0], m(x).detach(), rtol=1e-5, atol=1e-5)
    # with torch's constant folding the exporter fuses batch-norm into the conv weights
    g2 = assert_matches_ort(export(m, (x,)), (x,))
    assert "batch_norm" not in {n.op for n in g2.nodes}
    assert all(v.name.startswith(("c1.", "c2.", "fc.")) for v in g2.consts.values() if v.ndim >= 1 and v.numel > 1)


def test_transformer_encoder_layer_with_dynamic_batch() -> None:
    m = Encoder()
    x = torch.randn(2, 6, 32)
    mask = torch.ones(2, 6, dtype=torch.int64)
    mask[1, 4:] = 0
    data = export(m, (x, mask), input_names=["x", "mask"], dynamic_axes={"x": {0: "batch"}, "mask": {0: "batch"}})
    g = assert_matches_ort(data, (x, mask))
    torch.testing.assert_close(run(g, (x, mask))[0], m(x, mask).detach(), rtol=1e-5, atol=1e-5)
    assert [v.shape for v in g.inputs] == [(2, 6, 32), (2, 6)]
    assert sum(n.op == "linear" for n in g.nodes) == 4
    assert {"softmax", "layer_norm", "gelu", "split"} <= {n.op for n in g.nodes}
    # no shape arithmetic survives: Shape/Gather/Concat chains fold at import
    assert not {"cat", "index", "select"} & {n.op for n in g.nodes}
    # a different batch size is a different static graph
    x3, m3 = torch.randn(3, 6, 32), torch.ones(3, 6, dtype=torch.int64)
    assert_matches_ort(data, (x3, m3))


def test_import_from_path_and_node_names(tmp_path: Path) -> None:
    m = ResCnn()
    x = torch.randn(1, 3, 8, 8)
    p = tmp_path / "cnn.onnx"
    p.write_bytes(export(m, (x,), do_constant_folding=False))
    g = import_onnx(p)
    names = {n.name for n in g.nodes}
    assert {"c1", "b1", "c2", "b2", "fc"} <= names
    torch.testing.assert_close(run(g, (x,))[0], m(x).detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_minilm_round_trip() -> None:
    from bitpress.models import SENTENCES, MiniLMEncoder, encode_batch, load_minilm

    hf, tok = load_minilm()
    m = MiniLMEncoder(hf)
    ids, mask = encode_batch(tok, SENTENCES[:2], 16)
    g = assert_matches_ort(export(m, (ids, mask)), (ids, mask), tol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(run(g, (ids, mask))[0], m(ids, mask), rtol=1e-4, atol=1e-4)
    assert sum(n.op == "linear" for n in g.nodes) == 36
    assert "model.encoder.layer.0.attention.self.query.weight" in g.consts


# ----------------------------------------------------------------------------- single ONNX ops vs onnxruntime

F32, I64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


def one_op(
    op: str,
    inputs: list[tuple[str, int, list[int]]],
    out_types: list[int],
    *,
    inits: dict[str, np.ndarray] | None = None,
    opset: int = 18,
    n_out: int = 1,
    order: list[str] | None = None,
    **attrs: Any,
) -> onnx.ModelProto:
    ins = [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs]
    init_list = [numpy_helper.from_array(v, k) for k, v in (inits or {}).items()]
    names = order or [n for n, _, _ in inputs] + list(inits or {})
    node = helper.make_node(op, names, [f"y{i}" for i in range(n_out)], name=f"/blk/{op}", **attrs)
    outs = [helper.make_tensor_value_info(f"y{i}", out_types[min(i, len(out_types) - 1)], None) for i in range(n_out)]
    graph = helper.make_graph([node], "t", ins, outs, initializer=init_list)
    return with_output_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9))


def with_output_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fill in the graph outputs' shapes (the checker requires them) by ONNX shape inference."""
    return onnx.shape_inference.infer_shapes(model)


def f32(*shape: int) -> np.ndarray:
    return np.random.default_rng(sum(shape) + len(shape)).standard_normal(shape).astype(np.float32)


def i64(*vals: int) -> np.ndarray:
    return np.asarray(vals, dtype=np.int64)


OpCase = tuple[str, Callable[[], tuple[onnx.ModelProto, tuple[torch.Tensor, ...]]]]


def _x(*shape: int) -> torch.Tensor:
    return torch.randn(*shape)


def _xi(*shape: int) -> torch.Tensor:
    return torch.randint(-20, 20, shape, dtype=torch.int64)


OP_CASES: list[OpCase] = [
    (
        "Div-int-truncates",
        lambda: (one_op("Div", [("a", I64, [8]), ("b", I64, [8])], [I64]), (_xi(8), torch.tensor([3, -3, 7, -2, 5, -5, 1, 4]))),
    ),
    ("Mod-fmod0", lambda: (one_op("Mod", [("a", I64, [8]), ("b", I64, [8])], [I64]), (_xi(8), torch.tensor([3, -3, 7, -2, 5, -5, 1, 4])))),
    (
        "Mod-fmod1",
        lambda: (
            one_op("Mod", [("a", F32, [8]), ("b", F32, [8])], [F32], fmod=1),
            (_x(8) * 5, torch.tensor([3.0, -3, 7, -2, 5, -5, 1, 4])),
        ),
    ),
    ("Pow-int-exp", lambda: (one_op("Pow", [("a", F32, [5])], [F32], inits={"e": i64(3)}), (_x(5),))),
    (
        "Max-variadic",
        lambda: (one_op("Max", [("a", F32, [3, 4]), ("b", F32, [4]), ("c", F32, [3, 1])], [F32]), (_x(3, 4), _x(4), _x(3, 1))),
    ),
    (
        "Sum-variadic",
        lambda: (one_op("Sum", [("a", F32, [3, 4]), ("b", F32, [4]), ("c", F32, [3, 4])], [F32]), (_x(3, 4), _x(4), _x(3, 4))),
    ),
    ("Clip-consts", lambda: (one_op("Clip", [("x", F32, [6])], [F32], inits={"lo": np.float32(-0.5), "hi": np.float32(0.5)}), (_x(6),))),
    (
        "Clip-tensors",
        lambda: (
            one_op("Clip", [("x", F32, [6]), ("lo", F32, []), ("hi", F32, [])], [F32]),
            (_x(6), torch.tensor(-0.2), torch.tensor(0.3)),
        ),
    ),
    ("HardSigmoid-onnx-default", lambda: (one_op("HardSigmoid", [("x", F32, [10])], [F32]), (_x(10) * 4,))),
    ("PRelu", lambda: (one_op("PRelu", [("x", F32, [2, 3, 4])], [F32], inits={"s": f32(3, 1)}), (_x(2, 3, 4),))),
    ("IsNaN", lambda: (one_op("IsNaN", [("x", F32, [4])], [BOOL]), (torch.tensor([1.0, float("nan"), -2.0, float("nan")]),))),
    ("IsInf", lambda: (one_op("IsInf", [("x", F32, [4])], [BOOL]), (torch.tensor([1.0, float("inf"), float("-inf"), 0.0]),))),
    ("Xor", lambda: (one_op("Xor", [("a", BOOL, [5]), ("b", BOOL, [5])], [BOOL]), (torch.rand(5) > 0.5, torch.rand(5) > 0.5))),
    (
        "Gemm-transA-alpha-beta",
        lambda: (
            one_op("Gemm", [("a", F32, [4, 3])], [F32], inits={"b": f32(4, 5), "c": f32(3, 5)}, transA=1, alpha=0.5, beta=2.0),
            (_x(4, 3),),
        ),
    ),
    ("Gemm-dynamic-B", lambda: (one_op("Gemm", [("a", F32, [3, 4]), ("b", F32, [5, 4])], [F32], transB=1), (_x(3, 4), _x(5, 4)))),
    ("MatMul-dynamic", lambda: (one_op("MatMul", [("a", F32, [2, 3, 4]), ("b", F32, [2, 4, 5])], [F32]), (_x(2, 3, 4), _x(2, 4, 5)))),
    (
        "Conv-same-upper-stride",
        lambda: (
            one_op("Conv", [("x", F32, [1, 2, 7, 8])], [F32], inits={"w": f32(3, 2, 3, 2)}, auto_pad="SAME_UPPER", strides=[2, 2]),
            (_x(1, 2, 7, 8),),
        ),
    ),
    (
        "Conv-asym-pads",
        lambda: (
            one_op("Conv", [("x", F32, [1, 2, 6, 6])], [F32], inits={"w": f32(4, 2, 3, 3), "b": f32(4)}, pads=[0, 1, 2, 1]),
            (_x(1, 2, 6, 6),),
        ),
    ),
    (
        "Conv1d",
        lambda: (one_op("Conv", [("x", F32, [2, 3, 9])], [F32], inits={"w": f32(4, 3, 3)}, pads=[1, 1], dilations=[2]), (_x(2, 3, 9),)),
    ),
    (
        "MaxPool-asym",
        lambda: (
            one_op("MaxPool", [("x", F32, [1, 2, 7, 7])], [F32], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1]),
            (_x(1, 2, 7, 7),),
        ),
    ),
    (
        "MaxPool-ceil",
        lambda: (one_op("MaxPool", [("x", F32, [1, 2, 7, 7])], [F32], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1), (_x(1, 2, 7, 7),)),
    ),
    (
        "AveragePool-exclude-pad",
        lambda: (one_op("AveragePool", [("x", F32, [1, 2, 6, 6])], [F32], kernel_shape=[3, 3], pads=[1, 1, 1, 1]), (_x(1, 2, 6, 6),)),
    ),
    (
        "AveragePool-include-pad",
        lambda: (
            one_op("AveragePool", [("x", F32, [1, 2, 6, 6])], [F32], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1),
            (_x(1, 2, 6, 6),),
        ),
    ),
    ("GlobalAveragePool", lambda: (one_op("GlobalAveragePool", [("x", F32, [2, 3, 5, 4])], [F32]), (_x(2, 3, 5, 4),))),
    ("GlobalMaxPool", lambda: (one_op("GlobalMaxPool", [("x", F32, [2, 3, 5, 4])], [F32]), (_x(2, 3, 5, 4),))),
    (
        "BatchNormalization",
        lambda: (
            one_op(
                "BatchNormalization",
                [("x", F32, [2, 3, 4])],
                [F32],
                inits={"s": f32(3), "b": f32(3) + 1, "m": f32(3) - 1, "v": np.abs(f32(3)) + 0.5},
                epsilon=1e-3,
            ),
            (_x(2, 3, 4),),
        ),
    ),
    (
        "LayerNormalization-axis",
        lambda: (one_op("LayerNormalization", [("x", F32, [2, 3, 4])], [F32], inits={"s": f32(3, 4)}, axis=1), (_x(2, 3, 4),)),
    ),
    ("Softmax-axis0", lambda: (one_op("Softmax", [("x", F32, [3, 4])], [F32], axis=0), (_x(3, 4),))),
    ("ReduceMean-axes-input", lambda: (one_op("ReduceMean", [("x", F32, [2, 3, 4])], [F32], inits={"axes": i64(-1, 0)}), (_x(2, 3, 4),))),
    (
        "ReduceSum-int32-keeps-type",
        lambda: (
            one_op("ReduceSum", [("x", TensorProto.INT32, [3, 4])], [TensorProto.INT32], inits={"axes": i64(1)}, keepdims=0),
            (torch.randint(-5, 5, (3, 4), dtype=torch.int32),),
        ),
    ),
    ("ReduceMax-all", lambda: (one_op("ReduceMax", [("x", F32, [2, 3, 4])], [F32], keepdims=0), (_x(2, 3, 4),))),
    ("ReduceMin", lambda: (one_op("ReduceMin", [("x", F32, [2, 3, 4])], [F32], inits={"axes": i64(1)}), (_x(2, 3, 4),))),
    ("ReduceL2", lambda: (one_op("ReduceL2", [("x", F32, [2, 3, 4])], [F32], inits={"axes": i64(2)}), (_x(2, 3, 4),))),
    ("ReduceSum-noop", lambda: (one_op("ReduceSum", [("x", F32, [2, 3])], [F32], noop_with_empty_axes=1), (_x(2, 3),))),
    ("ArgMin", lambda: (one_op("ArgMin", [("x", F32, [3, 5])], [I64], axis=1, keepdims=0), (_x(3, 5),))),
    ("ArgMax-keep", lambda: (one_op("ArgMax", [("x", F32, [3, 5])], [I64], axis=0), (_x(3, 5),))),
    ("Reshape-zero-minus-one", lambda: (one_op("Reshape", [("x", F32, [2, 3, 4])], [F32], inits={"s": i64(0, -1)}), (_x(2, 3, 4),))),
    ("Flatten-axis2", lambda: (one_op("Flatten", [("x", F32, [2, 3, 4, 5])], [F32], axis=2), (_x(2, 3, 4, 5),))),
    ("Squeeze-all", lambda: (one_op("Squeeze", [("x", F32, [1, 3, 1, 2])], [F32]), (_x(1, 3, 1, 2),))),
    ("Unsqueeze-neg", lambda: (one_op("Unsqueeze", [("x", F32, [3, 2])], [F32], inits={"a": i64(0, -1)}), (_x(3, 2),))),
    ("Transpose-default", lambda: (one_op("Transpose", [("x", F32, [2, 3, 4])], [F32]), (_x(2, 3, 4),))),
    ("Expand-bidirectional", lambda: (one_op("Expand", [("x", F32, [3, 1])], [F32], inits={"s": i64(2, 1, 4)}), (_x(3, 1),))),
    ("Tile", lambda: (one_op("Tile", [("x", F32, [2, 3])], [F32], inits={"r": i64(2, 3)}), (_x(2, 3),))),
    (
        "Slice-steps",
        lambda: (
            one_op("Slice", [("x", F32, [6, 10])], [F32], inits={"s": i64(1, -8), "e": i64(100, 9), "a": i64(0, 1), "st": i64(2, 3)}),
            (_x(6, 10),),
        ),
    ),
    (
        "Slice-negative-step",
        lambda: (
            one_op("Slice", [("x", F32, [6, 10])], [F32], inits={"s": i64(-1), "e": i64(-100), "a": i64(1), "st": i64(-2)}),
            (_x(6, 10),),
        ),
    ),
    (
        "Slice-start-before-first",
        lambda: (
            one_op("Slice", [("x", F32, [2, 1])], [F32], inits={"s": i64(-2), "e": i64(-100), "a": i64(1), "st": i64(-3)}),
            (_x(2, 1),),
        ),
    ),
    ("Split-num-outputs", lambda: (one_op("Split", [("x", F32, [7, 2])], [F32], n_out=3, num_outputs=3), (_x(7, 2),))),
    ("Split-sizes", lambda: (one_op("Split", [("x", F32, [2, 6])], [F32], n_out=2, inits={"sp": i64(2, 4)}, axis=1), (_x(2, 6),))),
    ("Concat-int", lambda: (one_op("Concat", [("a", I64, [2, 2]), ("b", I64, [1, 2])], [I64], axis=0), (_xi(2, 2), _xi(1, 2)))),
    ("Trilu-lower-k", lambda: (one_op("Trilu", [("x", F32, [4, 5])], [F32], inits={"k": i64(1)}, upper=0), (_x(4, 5),))),
    ("Trilu-upper", lambda: (one_op("Trilu", [("x", F32, [2, 4, 4])], [F32]), (_x(2, 4, 4),))),
    (
        "Pad-constant-axes",
        lambda: (
            one_op("Pad", [("x", F32, [2, 3, 4])], [F32], inits={"p": i64(1, 2, 0, 3), "v": np.float32(0.5), "ax": i64(0, 2)}),
            (_x(2, 3, 4),),
        ),
    ),
    (
        "Pad-reflect",
        lambda: (
            one_op("Pad", [("x", F32, [1, 2, 5, 5])], [F32], inits={"p": i64(0, 0, 1, 2, 0, 0, 2, 1)}, mode="reflect"),
            (_x(1, 2, 5, 5),),
        ),
    ),
    (
        "Pad-edge",
        lambda: (
            one_op("Pad", [("x", F32, [1, 2, 5, 5])], [F32], inits={"p": i64(0, 0, 1, 2, 0, 0, 2, 1)}, mode="edge"),
            (_x(1, 2, 5, 5),),
        ),
    ),
    (
        "Gather-embedding",
        lambda: (one_op("Gather", [("i", I64, [2, 3])], [F32], inits={"w": f32(10, 4)}, order=["w", "i"]), (torch.randint(0, 10, (2, 3)),)),
    ),
    ("Gather-negative-idx", lambda: (one_op("Gather", [("x", F32, [4, 5, 3])], [F32], inits={"i": i64(-1, 0, 2)}, axis=1), (_x(4, 5, 3),))),
    (
        "Gather-scalar",
        lambda: (one_op("Gather", [("x", F32, [4, 5])], [F32], inits={"i": np.asarray(-2, dtype=np.int64)}, axis=0), (_x(4, 5),)),
    ),
    (
        "Gather-2d-idx",
        lambda: (one_op("Gather", [("x", F32, [4, 5, 3]), ("i", I64, [2, 2])], [F32], axis=1), (_x(4, 5, 3), torch.randint(-5, 5, (2, 2)))),
    ),
    (
        "GatherElements-neg",
        lambda: (
            one_op(
                "GatherElements", [("x", F32, [3, 4])], [F32], inits={"i": np.asarray([[0, -1], [2, 1], [-4, 3]], dtype=np.int64)}, axis=1
            ),
            (_x(3, 4),),
        ),
    ),
    (
        "Where",
        lambda: (
            one_op("Where", [("c", BOOL, [3, 4]), ("a", F32, [3, 4]), ("b", F32, [4])], [F32]),
            (torch.rand(3, 4) > 0.5, _x(3, 4), _x(4)),
        ),
    ),
    ("Cast-float-int32", lambda: (one_op("Cast", [("x", F32, [6])], [TensorProto.INT32], to=TensorProto.INT32), (_x(6) * 10,))),
    ("CastLike", lambda: (one_op("CastLike", [("x", I64, [4]), ("t", F32, [1])], [F32]), (_xi(4), _x(1)))),
    ("Gelu-tanh", lambda: (one_op("Gelu", [("x", F32, [10])], [F32], opset=20, approximate="tanh"), (_x(10),))),
    ("Softplus", lambda: (one_op("Softplus", [("x", F32, [10])], [F32]), (_x(10) * 3,))),
    ("Dropout-mask", lambda: (one_op("Dropout", [("x", F32, [4])], [F32, BOOL], n_out=2), (_x(4),))),
    ("Identity", lambda: (one_op("Identity", [("x", I64, [4])], [I64]), (_xi(4),))),
]


@pytest.mark.parametrize(("label", "make"), OP_CASES, ids=[c[0] for c in OP_CASES])
def test_onnx_op_matches_onnxruntime(label: str, make: Callable[[], tuple[onnx.ModelProto, tuple[torch.Tensor, ...]]]) -> None:
    torch.manual_seed(len(label))
    model, inputs = make()
    onnx.checker.check_model(model)
    assert_matches_ort(model, inputs)


def test_shape_arithmetic_folds_to_constants() -> None:
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape (what exporters emit for x.view(b, -1)) leaves one reshape."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["b"], axis=0),
        helper.make_node("Unsqueeze", ["b", "ax"], ["b1"]),
        helper.make_node("Concat", ["b1", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"], name="/head/Reshape"),
        helper.make_node("Range", ["r0", "b", "r1"], ["r"]),
        helper.make_node("ConstantOfShape", ["s"], ["ones"], value=numpy_helper.from_array(np.ones(1, np.float32))),
        helper.make_node("Mul", ["x", "ones"], ["z"], name="/head/Mul"),
    ]
    inits = [
        numpy_helper.from_array(np.asarray(0, np.int64), "zero"),
        numpy_helper.from_array(i64(0), "ax"),
        numpy_helper.from_array(i64(-1), "minus1"),
        numpy_helper.from_array(np.asarray(0, np.int64), "r0"),
        numpy_helper.from_array(np.asarray(1, np.int64), "r1"),
    ]
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", F32, ["batch", 3, 4])],
        [helper.make_tensor_value_info(n, t, None) for n, t in (("y", F32), ("r", I64), ("z", F32))],
        initializer=inits,
    )
    model = with_output_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))
    x = torch.randn(5, 3, 4)
    g = assert_matches_ort(model, (x,))
    assert [n.op for n in g.nodes] == ["reshape", "mul"]
    assert [n.name for n in g.nodes] == ["head.reshape", "head.mul"]
    assert torch.equal(g.outputs[1].value, torch.arange(5))


def test_old_opset_is_upgraded() -> None:
    """Opset 11: Squeeze and ReduceSum take axes as attributes; the version converter moves them to inputs."""
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], axes=[2], keepdims=1),
        helper.make_node("Squeeze", ["s"], ["y"], axes=[2]),
    ]
    graph = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info("x", F32, [2, 3, 4])], [helper.make_tensor_value_info("y", F32, [2, 3])]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=7)
    x = torch.randn(2, 3, 4)
    g = assert_matches_ort(model, (x,))
    torch.testing.assert_close(run(g, (x,))[0], x.sum(2))


@settings(max_examples=10, deadline=None)
@given(
    batch=st.integers(1, 3),
    cin=st.integers(1, 4),
    cout=st.integers(1, 4),
    k=st.integers(1, 3),
    stride=st.integers(1, 2),
    auto=st.sampled_from(["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]),
)
def test_conv_padding_property(batch: int, cin: int, cout: int, k: int, stride: int, auto: str) -> None:
    attrs: dict[str, Any] = {"strides": [stride, stride], "auto_pad": auto}
    if auto == "NOTSET":
        attrs["pads"] = [k // 2, 0, k - 1 - k // 2, 1]
    model = one_op("Conv", [("x", F32, [batch, cin, 7, 6])], [F32], inits={"w": f32(cout, cin, k, k), "b": f32(cout)}, **attrs)
    assert_matches_ort(model, (torch.randn(batch, cin, 7, 6),))


# ----------------------------------------------------------------------------- errors


def test_unsupported_ops_are_listed_at_once() -> None:
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w"], ["a"], name="/up/ConvTranspose"),
        helper.make_node("Relu", ["a"], ["b"], name="/act/Relu"),
        helper.make_node("NonMaxSuppression", ["b", "b"], ["c"], name="/nms/NonMaxSuppression"),
        helper.make_node("FusedMatMul", ["b", "b"], ["d"], name="/ms/FusedMatMul", domain="com.microsoft"),
    ]
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", F32, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("c", I64, None), helper.make_tensor_value_info("d", F32, None)],
        initializer=[numpy_helper.from_array(f32(2, 2, 3, 3), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)], ir_version=9)
    with pytest.raises(UnsupportedOpError) as e:
        import_onnx(model)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("3 unsupported ONNX op type(s): ")
    assert "ConvTranspose at node '/up/ConvTranspose' (up)" in msg
    assert "NonMaxSuppression at node '/nms/NonMaxSuppression' (nms)" in msg
    assert "com.microsoft.FusedMatMul at node '/ms/FusedMatMul' (ms)" in msg
    assert "Relu" not in msg


def test_data_dependent_shape_is_named() -> None:
    nodes = [helper.make_node("Reshape", ["x", "s"], ["y"], name="/view/Reshape")]
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", F32, [2, 6]), helper.make_tensor_value_info("s", I64, [2])],
        [helper.make_tensor_value_info("y", F32, None)],
    )
    model = with_output_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))
    with pytest.raises(UnsupportedOpError, match=r"Reshape at node '/view/Reshape' \(view\): shape must be a constant"):
        import_onnx(model)


def test_malformed_file_is_one_line_error(tmp_path: Path) -> None:
    p = tmp_path / "broken.onnx"
    p.write_bytes(b"\x08\x07\x12\x04this is not protobuf \xff\xfe" * 10)
    with pytest.raises(FrontendError) as e:
        import_onnx(p)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{p} is not a valid ONNX model")
    # a truncated real model
    m = Mlp()
    good = export(m, (torch.randn(1, 16),))
    p.write_bytes(good[: len(good) // 2])
    with pytest.raises(FrontendError, match="is not a valid ONNX model") as e2:
        import_onnx(p)
    assert "\n" not in str(e2.value)
    with pytest.raises(FrontendError, match="does not exist"):
        import_onnx(tmp_path / "missing.onnx")


def test_structurally_invalid_model_is_one_line_error() -> None:
    # a node reads a value nothing defines
    nodes = [helper.make_node("Relu", ["nowhere"], ["y"], name="/r/Relu")]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", F32, [2])], [helper.make_tensor_value_info("y", F32, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    with pytest.raises(FrontendError, match="invalid ONNX model: ") as e:
        import_onnx(model)
    assert "\n" not in str(e.value)


def test_symbolic_dims_need_example_inputs() -> None:
    model = one_op("Relu", [("x", F32, ["batch", 4])], [F32])
    with pytest.raises(FrontendError, match=r"ONNX input 'x' has symbolic dims \['batch'\]; pass example_inputs"):
        import_onnx(model)
    with pytest.raises(FrontendError, match=r"example input 0 has shape \[2, 5\]; ONNX input 'x' is \['batch', 4\]"):
        import_onnx(model, (torch.randn(2, 5),))
    g = import_onnx(model, (torch.randn(3, 4),))
    assert g.inputs[0].shape == (3, 4)


def test_not_a_model() -> None:
    with pytest.raises(TypeError, match=r"takes an onnx\.ModelProto, serialized bytes or a path, not int"):
        import_onnx(42)
    with pytest.raises(FrontendError, match="bytes are not a valid ONNX model"):
        import_onnx(b"\xff\xfe not a model")
    x = torch.randn(2, 16)
    g = import_onnx(export(Mlp(), (x,)))  # serialized bytes work as well
    assert sum(n.op == "linear" for n in g.nodes) == 3


def test_supported_op_list_covers_the_torch_frontend_families() -> None:
    ops = set(supported_onnx_ops())
    families = {"MatMul", "Gemm", "Conv", "BatchNormalization", "MaxPool", "AveragePool", "GlobalAveragePool", "Relu", "Add", "Concat",
                "Flatten", "Softmax", "LayerNormalization", "Gather", "Reshape", "Transpose", "Slice", "Where", "Gelu", "Sigmoid",
                "Erf", "Trilu", "Expand", "Cast", "Pow", "Sqrt", "ReduceMean", "Split", "Pad"}  # fmt: skip
    assert families <= ops, sorted(families - ops)


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(1, 8),
    start=st.integers(-10, 10),
    end=st.integers(-10, 10),
    step=st.sampled_from([-3, -2, -1, 1, 2, 3]),
)
def test_slice_property(n: int, start: int, end: int, step: int) -> None:
    """ONNX Slice bounds, including negative steps (imported as an index gather) and starts before
    the first element (ONNX clamps them to it; Python slicing would give an empty result)."""
    model = one_op("Slice", [("x", F32, [3, n])], [F32], inits={"s": i64(start), "e": i64(end), "a": i64(1), "st": i64(step)})
    assert_matches_ort(model, (torch.randn(3, n),))


class _Interp(nn.Module):
    def __init__(self, **kw: Any) -> None:
        super().__init__()
        self.kw = kw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(x, **self.kw)


@pytest.mark.parametrize(
    "kw",
    [
        {"scale_factor": 2, "mode": "nearest"},
        {"size": (5, 7), "mode": "nearest"},
        {"scale_factor": 2, "mode": "bilinear"},
        {"size": (5, 6), "mode": "bilinear", "align_corners": True},
        {"size": (6, 8), "mode": "bicubic"},
    ],
    ids=["nearest-x2", "nearest-size", "bilinear", "bilinear-ac", "bicubic"],
)
@pytest.mark.parametrize("opset", [13, 18])
def test_resize_from_torch_exporter(kw: dict[str, Any], opset: int) -> None:
    """Resize (DINOv2 stopped there) imports as interpolate and matches onnxruntime and eager torch."""
    x = torch.randn(1, 2, 3, 4)
    m = _Interp(**kw)
    g = assert_matches_ort(export(m, (x,), opset_version=opset), (x,), tol=1e-5)
    assert [n.op for n in g.nodes] == ["interpolate"]
    torch.testing.assert_close(run(g, (x,))[0], m(x), rtol=1e-5, atol=1e-5)

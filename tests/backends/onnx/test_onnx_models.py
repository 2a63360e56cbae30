"""ONNX backend on real models and artifacts: target="onnx" matches the interpreter; save/load; bytes as stored."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import warnings
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import bitpress as bp
from bitpress.api import ArtifactError
from bitpress.backends.onnx import backend as onnx_backend
from bitpress.compiler.interpreter import run


def assert_close_to_interpreter(cm: bp.CompiledModel, inputs: tuple[torch.Tensor, ...], tol: float = 1e-5) -> torch.Tensor:
    got = cm(*inputs)
    want = run(cm.graph, inputs)[0]
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    return got


def test_fashion_cnn_on_onnx_matches_interpreter_and_eager() -> None:
    from bitpress.models import load_fashion_cnn, load_fashion_mnist

    m = load_fashion_cnn()
    x, y = load_fashion_mnist("test", limit=64)
    cm = bp.compile(m, (x,), target="onnx")
    got = assert_close_to_interpreter(cm, (x,))
    with torch.no_grad():
        eager = m(x)
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-4)
    assert torch.equal(got.argmax(1), eager.argmax(1))
    assert (got.argmax(1) == y).float().mean() > 0.85
    info = cm.report.backend
    assert info["opset"] == 21 and "Conv" in info["onnx_ops"]
    # float weights are stored as they are: the ONNX initializers hold the IR's weight bytes plus the
    # int64 shape operand of the flatten (an attribute in the IR, an initializer in ONNX)
    assert info["initializer_bytes"] == cm.report.total_bytes + 2 * 8


@pytest.mark.slow
def test_minilm_on_onnx_matches_interpreter() -> None:
    from bitpress.models import SENTENCES, MiniLMEncoder, encode_batch, load_minilm

    hf, tok = load_minilm()
    m = MiniLMEncoder(hf)
    ids, mask = encode_batch(tok, SENTENCES[:2], 24)
    cm = bp.compile(m, (ids, mask), target="onnx")
    got = assert_close_to_interpreter(cm, (ids, mask), tol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(got, m(ids, mask), rtol=1e-4, atol=1e-4)
    # other sentences through the same compiled model
    ids2, mask2 = encode_batch(tok, SENTENCES[10:12], 24)
    assert_close_to_interpreter(cm, (ids2, mask2), tol=1e-4)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32), nn.Softmax(-1)).eval()


def test_save_writes_model_onnx_and_load_runs_it(tmp_path: Path) -> None:
    m, x = _mlp(), torch.randn(4, 64)
    cm = bp.compile(m, (x,), target="onnx")
    out = cm.save(tmp_path / "art")
    assert (out / "model.onnx").is_file()
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"] == "onnx" and "model.onnx" in manifest["files"]
    # the saved file runs in plain onnxruntime, without bitpress
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    plain = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    loaded = bp.load(out)
    y = loaded(x)
    assert torch.equal(y, cm(x))
    assert torch.equal(y, torch.from_numpy(plain))
    assert loaded.target == "onnx" and loaded.report.total_bytes == cm.report.total_bytes
    # a corrupted model file is caught by the manifest hashes
    data = bytearray((out / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"model\.onnx is corrupt: sha256 does not match"):
        bp.load(out)


def test_load_in_a_fresh_process(tmp_path: Path) -> None:
    m, x = _mlp(), torch.randn(4, 64)
    cm = bp.compile(m, (x,), target="onnx")
    out = cm.save(tmp_path / "art")
    torch.save({"x": x, "y": cm(x)}, tmp_path / "io.pt")
    code = (
        "import sys, torch, bitpress as bp\n"
        f"d = torch.load({str(tmp_path / 'io.pt')!r})\n"
        f"y = bp.load({str(out)!r})(d['x'])\n"
        "sys.exit(0 if torch.equal(y, d['y']) else 3)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-2000:]


def test_large_model_path_uses_external_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Models past protobuf's 2 GiB keep their weights in model.onnx.data (exercised with a lowered limit)."""
    monkeypatch.setattr(onnx_backend, "_PROTO_LIMIT", 1024)
    m, x = _mlp(), torch.randn(4, 64)
    cm = bp.compile(m, (x,), target="onnx")
    torch.testing.assert_close(cm(x), m(x).detach(), rtol=1e-5, atol=1e-6)
    out = cm.save(tmp_path / "big")
    assert (out / "model.onnx.data").is_file()
    assert (out / "model.onnx").stat().st_size < 4096 < (out / "model.onnx.data").stat().st_size
    assert torch.equal(bp.load(out)(x), cm(x))


def test_compile_an_onnx_file_for_the_onnx_target(tmp_path: Path) -> None:
    m, x = _mlp(), torch.randn(4, 64)
    p = tmp_path / "mlp.onnx"
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x,), f, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    p.write_bytes(f.getvalue())
    cm = bp.compile(str(p), (x,), target="onnx")
    sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
    want = torch.from_numpy(sess.run(None, {"x": x.numpy()})[0])
    torch.testing.assert_close(cm(x), want, rtol=1e-5, atol=1e-6)
    assert sum(n.op == "linear" for n in cm.graph.nodes) == 2


def test_quantized_model_bytes_are_reported_as_stored() -> None:
    """int4 weights reach the ONNX file packed: its initializers are about as small as the IR's stored bytes."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 64)).eval()
    x = torch.randn(4, 256)
    cm = bp.compile(m, (x,), passes=[bp.passes.Quantize(method="rtn", bits=4, group_size=64)], target="onnx")
    assert_close_to_interpreter(cm, (x,))
    rep = cm.report
    assert rep.total_bytes < rep.original_bytes / 5
    assert rep.total_bytes <= rep.backend["initializer_bytes"] <= 1.1 * rep.total_bytes
    # the same figure, read back from the emitted model
    exe = cm.executable
    assert isinstance(exe, onnx_backend.OnnxExecutable)
    assert onnx_backend.initializer_bytes(exe.model) == rep.backend["initializer_bytes"]


def test_missing_lowering_names_op_and_other_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    from bitpress.compiler import ops
    from bitpress.compiler.ir import Graph, TensorType
    from bitpress.compiler.target import LoweringError

    monkeypatch.setattr(ops, "_REGISTRY", dict(ops._REGISTRY))  # the op below lives only in this test
    ops.register_op("test_torch_only_op", ("x",))(lambda x: x + 1)
    g = Graph()
    xv = g.add_input("x", TensorType((2,), "float32"))
    g.set_outputs([g.call("test_torch_only_op", [xv], name="head.odd")])
    with pytest.raises(
        LoweringError, match=r"target onnx cannot lower: op 'test_torch_only_op' at head\.odd; targets with a lowering: .*torch"
    ):
        bp.compile(g, (torch.randn(2),), target="onnx")


def test_bad_backend_options_are_named() -> None:
    m, x = _mlp(), torch.randn(2, 64)
    with pytest.raises(ValueError, match=r"options\['onnx_optimization'\] must be one of"):
        bp.compile(m, (x,), target="onnx", options={"onnx_optimization": "max"})
    with pytest.raises(ValueError, match=r"options\['threads'\] must be an int"):
        bp.compile(m, (x,), target="onnx", options={"threads": "two"})
    with pytest.raises(ValueError, match=r"options\['providers'\]: \['NoSuchExecutionProvider'\] not available"):
        bp.compile(m, (x,), target="onnx", options={"providers": ["NoSuchExecutionProvider"]})
    cm = bp.compile(m, (x,), target="onnx", options={"threads": 1, "onnx_optimization": "none"})
    torch.testing.assert_close(cm(x), m(x).detach(), rtol=1e-5, atol=1e-6)

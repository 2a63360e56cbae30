"""compile(), the report, save/load, tolerances and user-facing errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch import nn

import bitpress as bp
from bitpress.compiler.ir import Graph


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


def test_compile_call_and_report() -> None:
    m, x = mlp(), torch.randn(3, 8)
    cm = bp.compile(m, (x,), target="torch")
    with torch.no_grad():
        torch.testing.assert_close(cm(x), m(x))
    r = cm.report
    assert [row["op"] for row in r.layers] == ["linear", "linear"]
    assert r.layers[0]["params"] == 8 * 16 + 16
    assert r.layers[0]["bytes"] == (8 * 16 + 16) * 4
    assert r.total_bytes == sum(p.numel() * 4 for p in m.parameters())
    assert f"total: {r.total_bytes:,} bytes" in str(r)
    d = r.to_dict()
    json.dumps(d)
    assert d["layers"][1]["name"] == "2"
    assert isinstance(cm.graph, Graph)


def test_input_mismatch_is_one_line_error() -> None:
    cm = bp.compile(mlp(), (torch.randn(3, 8),), dynamic=None)
    with pytest.raises(ValueError, match=r"input .*: expected shape \[3, 8\], got \[3, 9\]") as e:
        cm(torch.randn(3, 9))
    assert "\n" not in str(e.value)
    dyn = bp.compile(mlp(), (torch.randn(3, 8),))  # dynamic="batch": any batch, the features still checked
    with pytest.raises(ValueError, match=r"input .*: dim 1 is 9, expected 8 \(input type float32\[batch,8\]\)") as e:
        dyn(torch.randn(5, 9))
    assert "\n" not in str(e.value)


def test_save_load_roundtrip_and_hash_check(tmp_path: Path) -> None:
    m, x = mlp(), torch.randn(3, 8)
    cm = bp.compile(m, (x,))
    out = cm.save(tmp_path / "art")
    cm2 = bp.load(out)
    assert torch.equal(cm2(x), cm(x))
    assert cm2.report.total_bytes == cm.report.total_bytes
    # corrupt one byte of the weights
    w = out / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(bp.ArtifactError, match=r"weights.safetensors is corrupt: sha256 does not match the manifest"):
        bp.load(out)
    with pytest.raises(bp.ArtifactError, match="not a bitpress artifact"):
        bp.load(tmp_path)


def test_save_is_atomic_and_keeps_old_artifact_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m, x = mlp(), torch.randn(3, 8)
    cm = bp.compile(m, (x,))
    dest = tmp_path / "art"
    cm.save(dest)
    before = (dest / "manifest.json").read_text()

    def boom(directory: Path) -> list[str]:
        raise OSError("disk full")

    monkeypatch.setattr(cm.executable, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        cm.save(dest)
    assert (dest / "manifest.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["art"]  # no temp dirs left behind


@dataclass(frozen=True)
class Noise:
    """A deliberately lossy pass for tolerance tests: W <- W + noise."""

    name: ClassVar[str] = "add-noise"
    scale: float = 1.0

    def apply(self, g: Graph, ctx: bp.PassContext) -> bp.PassResult:
        gen = torch.Generator().manual_seed(0)
        for v in list(g.consts.values()):
            if v.ndim == 2:
                g.set_const(v, v.value + self.scale * torch.randn(v.shape, generator=gen))
        return bp.PassResult(g, True)


def test_tolerance_failure_names_the_pass() -> None:
    with pytest.raises(bp.ToleranceError, match=r"pass add-noise broke the tolerance: output SQNR .* dB < 30.0 dB"):
        bp.compile(mlp(), (torch.randn(3, 8),), passes=[Noise(1.0)], tolerance={"sqnr_db": 30})
    cm = bp.compile(mlp(), (torch.randn(3, 8),), passes=[Noise(1e-6)], tolerance={"sqnr_db": 30})
    assert cm.report.passes[-1].name == "add-noise"
    sq = cm.report.passes[-1].sqnr_db
    assert sq is not None and 30 < sq < math.inf


def test_bad_tolerance_key() -> None:
    with pytest.raises(ValueError, match=r"unknown tolerance key\(s\) \['sqnr'\]"):
        bp.compile(mlp(), (torch.randn(3, 8),), tolerance={"sqnr": 3})


def test_nan_weights_are_rejected() -> None:
    m = mlp()
    with torch.no_grad():
        m[0].weight[0, 0] = float("nan")
    with pytest.raises(bp.CompileError, match=r"NaN/inf weights in 0.weight"):
        bp.compile(m, (torch.randn(3, 8),))


def test_inf_weight_rejected_but_inf_mask_accepted() -> None:
    """-inf in a mask constant is legitimate (GPT-2's exported causal mask); in a weight it is not."""
    m = mlp()
    with torch.no_grad():
        m[0].weight[0, 0] = float("inf")
    with pytest.raises(bp.CompileError, match=r"NaN/inf weights in 0.weight"):
        bp.compile(m, (torch.randn(3, 8),), target="torch")

    class Masked(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)
            self.register_buffer("mask", torch.triu(torch.full((4, 4), float("-inf")), 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.lin(x) + self.mask, -1)

    x = torch.randn(2, 4, 4)
    masked = Masked().eval()
    cm = bp.compile(masked, (x,), target="onnx")
    torch.testing.assert_close(cm(x), masked(x), rtol=1e-5, atol=1e-5)


def test_unknown_target() -> None:
    with pytest.raises(ValueError, match="unknown target 'tpu'"):
        bp.compile(mlp(), (torch.randn(3, 8),), target="tpu")


def test_missing_lowering_names_op_node_and_targets() -> None:
    from bitpress.compiler.target import LoweringError, legalize_check, register_backend

    register_backend(["tiny-test"], "tests.test_api:_TinyBackend")
    g = bp.compile(mlp(), (torch.randn(3, 8),)).graph
    with pytest.raises(LoweringError, match=r"target tiny-test cannot lower: op 'relu' at 1.relu; targets with a lowering: .*torch"):
        legalize_check(g, "tiny-test")


class _TinyBackend:
    name = "tiny-test"

    def supported_ops(self, target: str) -> set[str]:
        return {"linear"}


def test_recipe_errors_name_the_key(tmp_path: Path) -> None:
    from bitpress.compiler.recipe import load_recipe

    assert [p.name for p in load_recipe({"passes": ["fold-batch-norm", {"dce": {}}]})] == ["fold-batch-norm", "dce"]
    with pytest.raises(bp.RecipeError, match=r"passes\[1\]: unknown pass 'quantise'"):
        load_recipe({"passes": ["dce", {"quantise": {"bits": 4}}]})
    with pytest.raises(bp.RecipeError, match=r"passes\[0\] \(fold-constants\): unknown option 'bitz'; options: max_growth"):
        load_recipe({"passes": [{"fold-constants": {"bitz": 4}}]})
    bad = tmp_path / "r.yaml"
    bad.write_text("passes: [dce\n")
    with pytest.raises(bp.RecipeError, match=r"r.yaml: not valid YAML"):
        load_recipe(bad)
    with pytest.raises(bp.RecipeError, match=r"unknown top-level key\(s\) \['pases'\]; expected 'passes'"):
        load_recipe({"pases": []})
    with pytest.raises(bp.RecipeError, match="missing the 'passes' list"):
        load_recipe({"name": "x"})


def test_explain_log_available_from_compiled_model() -> None:
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Dropout(), nn.Linear(2 * 4 * 4, 3)).eval()
    cm = bp.compile(m, (torch.randn(1, 1, 6, 6),))
    text = cm.explain()
    assert "fold-bn-conv fired on" in text
    assert not any(n.op in ("batch_norm", "dropout") for n in cm.graph.nodes)


def test_cli_compile_report_and_errors(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("passes:\n  - dce\n  - quantise: {bits: 4}\n")
    model = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(mlp(), (torch.randn(3, 8),)), str(model))
    cmd = [sys.executable, "-m", "bitpress.cli"]
    r = subprocess.run([*cmd, "compile", str(model), "--recipe", str(recipe), "-o", str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("bitpress: error: recipe") and "unknown pass 'quantise'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    recipe.write_text("passes:\n  - dce\n")
    r = subprocess.run([*cmd, "compile", str(model), "--recipe", str(recipe), "-o", str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*cmd, "report", str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 0 and "total:" in r.stdout

"""`bitpress merge` writes the merged state dict atomically; bad input is one line and exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bitpress.cli import main
from bitpress.passes.merge import merge_state_dicts


@pytest.fixture
def ckpts(tmp_path: Path) -> dict[str, Path]:
    g = torch.Generator().manual_seed(0)
    base = {"l.weight": torch.randn(6, 5, generator=g), "l.bias": torch.randn(6, generator=g), "bn.num_batches_tracked": torch.tensor(3)}
    out = {"base": tmp_path / "b.safetensors"}
    save_file(base, str(out["base"]))
    for name in ("a", "c"):
        sd = {k: (v + 0.2 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v) for k, v in base.items()}
        out[name] = tmp_path / f"{name}.safetensors"
        save_file(sd, str(out[name]))
    return out


def test_merge_ties_writes_the_merged_file(ckpts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "out" / "merged.safetensors"
    args = ["merge", "--base", str(ckpts["base"]), "--models", str(ckpts["a"]), str(ckpts["c"])]
    assert main([*args, "--method", "ties", "--density", "0.2", "-o", str(dest)]) == 0
    got = load_file(str(dest))
    want, _ = merge_state_dicts(
        [load_file(str(ckpts["a"])), load_file(str(ckpts["c"]))], load_file(str(ckpts["base"])), method="ties", density=0.2
    )
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert "merged 2 model(s) with ties" in capsys.readouterr().out
    assert [p.name for p in dest.parent.iterdir()] == ["merged.safetensors"]  # no temp file left behind


def test_merge_average_needs_no_base(ckpts: dict[str, Path], tmp_path: Path) -> None:
    dest = tmp_path / "soup.safetensors"
    assert main(["merge", "--models", str(ckpts["a"]), str(ckpts["c"]), "--weights", "1", "3", "-o", str(dest)]) == 0
    a, c = load_file(str(ckpts["a"])), load_file(str(ckpts["c"]))
    torch.testing.assert_close(load_file(str(dest))["l.weight"], 0.25 * a["l.weight"] + 0.75 * c["l.weight"])


def test_fold_lora(ckpts: dict[str, Path], tmp_path: Path) -> None:
    a, b = torch.randn(2, 5), torch.randn(6, 2)
    adapter = tmp_path / "adapter.safetensors"
    save_file({"base_model.model.l.lora_A.weight": a, "base_model.model.l.lora_B.weight": b}, str(adapter))
    dest = tmp_path / "folded.safetensors"
    assert main(["merge", "--base", str(ckpts["base"]), "--lora", str(adapter), "--lora-alpha", "4", "-o", str(dest)]) == 0
    base = load_file(str(ckpts["base"]))
    torch.testing.assert_close(load_file(str(dest))["l.weight"], base["l.weight"] + 2.0 * b @ a)


def test_errors_are_one_line(ckpts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.safetensors"
    save_file({"l.weight": torch.zeros(6, 4)}, str(bad))
    dest = tmp_path / "never.safetensors"
    code = main(["merge", "--base", str(ckpts["base"]), "--models", str(ckpts["a"]), str(bad), "--method", "ties", "-o", str(dest)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not dest.exists()
    assert err.count("\n") == 0 and "bad.safetensors lacks" in err and "l.bias" in err and "l.weight [6,4] vs [6,5]" in err
    assert main(["merge", "--models", str(ckpts["a"]), str(ckpts["c"]), "--method", "ties", "-o", str(dest)]) == 2
    assert "--base: method 'ties' needs the base checkpoint" in capsys.readouterr().err
    assert main(["merge", "--models", str(ckpts["a"]), "--method", "slerp", "-o", str(dest)]) == 2
    assert "slerp merges exactly two models" in capsys.readouterr().err

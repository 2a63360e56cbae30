"""parse_lora / fold_lora_state_dict: key spellings, scales, and every problem listed at once."""

from __future__ import annotations

import pytest
import torch

from bitpress.passes.merge import fold_lora_state_dict, parse_lora


def test_key_spellings_and_scale() -> None:
    a, b = torch.randn(3, 5), torch.randn(4, 3)
    for keys in (
        ("l.lora_A.weight", "l.lora_B.weight"),
        ("base_model.model.l.lora_A.default.weight", "base_model.model.l.lora_B.default.weight"),
        ("l.lora_down.weight", "l.lora_up.weight"),
    ):
        ads = parse_lora({keys[0]: a, keys[1]: b}, alpha=6)
        assert list(ads) == ["l.weight"] and ads["l.weight"].rank == 3 and ads["l.weight"].scale == 2.0
    ads = parse_lora({"l.lora_A.weight": a, "l.lora_B.weight": b}, scale=0.5)
    w = torch.randn(4, 5)
    out = fold_lora_state_dict({"l.weight": w, "l.bias": torch.zeros(4)}, ads)
    torch.testing.assert_close(out["l.weight"], w + 0.5 * b @ a)
    assert torch.equal(out["l.bias"], torch.zeros(4))


def test_one_x_one_conv_adapters_are_matrices() -> None:
    a, b = torch.randn(2, 6, 1, 1), torch.randn(5, 2, 1, 1)
    ad = parse_lora({"c.lora_A.weight": a, "c.lora_B.weight": b})["c.weight"]
    torch.testing.assert_close(ad.delta().float(), b[:, :, 0, 0] @ a[:, :, 0, 0])


def test_every_problem_is_listed() -> None:
    sd = {
        "x.lora_A.weight": torch.randn(2, 4),
        "y.lora_B.weight": torch.randn(4, 2),
        "z.lora_A.weight": torch.randn(2, 4),
        "z.lora_B.weight": torch.randn(4, 3),
        "q.weight": torch.randn(2, 2),
    }
    with pytest.raises(ValueError) as e:
        parse_lora(sd)
    msg = str(e.value)
    assert "\n" not in msg and "(4 problem(s))" in msg
    for part in (
        "x.weight: lora_A without lora_B",
        "y.weight: lora_B without lora_A",
        "z.weight: lora_A [2, 4] and lora_B [4, 3]",
        "q.weight: not a lora",
    ):
        assert part in msg
    ads = parse_lora({"l.lora_A.weight": torch.randn(2, 5), "l.lora_B.weight": torch.randn(4, 2)})
    with pytest.raises(ValueError, match=r"l\.weight: weight \[4, 6\] but B @ A is \[4, 5\]"):
        fold_lora_state_dict({"l.weight": torch.randn(4, 6)}, ads)
    with pytest.raises(ValueError, match=r"l\.weight: not in the model"):
        fold_lora_state_dict({}, ads)

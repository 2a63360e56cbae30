"""Single-op cases for the wider op set (issue 14), shared by the TVM and ONNX op tests."""

from __future__ import annotations

from typing import Any

import torch

from tests.backends._op_graphs import C, bools, ints, pos, r


def _distinct(*shape: int) -> torch.Tensor:
    """Floats without ties (sort/topk indices are then unique)."""
    n = 1
    for s in shape:
        n *= s
    return (torch.randperm(n).float() / n - 0.5).reshape(shape)


# id -> (op, operands, attrs, tolerance)
NN_CASES: dict[str, tuple[str, list[Any], dict[str, Any], float]] = {
    "log1p": ("log1p", [pos(3, 5)], {}, 1e-4),
    "expm1": ("expm1", [r(3, 5)], {}, 1e-4),
    "trunc": ("trunc", [r(3, 5) * 4], {}, 0.0),
    "atan": ("atan", [r(3, 5)], {}, 1e-4),
    "asin": ("asin", [torch.rand(3, 5) * 1.8 - 0.9], {}, 1e-4),
    "acos": ("acos", [torch.rand(3, 5) * 1.8 - 0.9], {}, 1e-4),
    "sinh": ("sinh", [r(3, 5)], {}, 1e-4),
    "cosh": ("cosh", [r(3, 5)], {}, 1e-4),
    "tan": ("tan", [r(3, 5)], {}, 1e-4),
    "isnan": ("isnan", [torch.tensor([1.0, float("nan"), float("inf"), -2.0])], {}, 0.0),
    "isinf": ("isinf", [torch.tensor([1.0, float("nan"), float("inf"), -float("inf")])], {}, 0.0),
    "bitwise-not": ("bitwise_not", [ints(3, 4)], {}, 0.0),
    "bitwise-not-bool": ("bitwise_not", [bools(3, 4)], {}, 0.0),
    "fmod-float": ("fmod", [r(3, 5) * 5, pos(3, 5)], {}, 1e-4),
    "fmod-int": ("fmod", [ints(3, 5), ints(3, 5, lo=1, hi=7)], {}, 0.0),
    "prod": ("prod", [r(3, 4)], {"dim": 1}, 1e-5),
    "any": ("any", [bools(3, 4)], {"dim": [1]}, 0.0),
    "all": ("all", [bools(3, 4)], {"dim": [0], "keepdim": True}, 0.0),
    "amin": ("amin", [r(3, 4, 5)], {"dim": [1, 2]}, 0.0),
    "argmin": ("argmin", [r(3, 4)], {"dim": 1}, 0.0),
    "var": ("var", [r(3, 4, 5)], {"dim": [-1], "correction": 1.0}, 1e-5),
    "var-all-biased": ("var", [r(3, 4)], {"correction": 0.0, "keepdim": False}, 1e-5),
    "cumsum": ("cumsum", [r(3, 6)], {"dim": 1}, 1e-5),
    "cumsum-int": ("cumsum", [ints(3, 6, dtype=torch.int32)], {"dim": -1}, 0.0),
    "flip": ("flip", [r(2, 3, 4)], {"dims": [0, 2]}, 0.0),
    "topk": ("topk", [_distinct(3, 8)], {"k": 3, "dim": -1}, 0.0),
    "topk-smallest": ("topk", [_distinct(6, 4)], {"k": 2, "dim": 0, "largest": False}, 0.0),
    "sort": ("sort", [_distinct(3, 7)], {"dim": -1}, 0.0),
    "sort-desc": ("sort", [_distinct(5, 3)], {"dim": 0, "descending": True}, 0.0),
    "scatter": ("scatter", [r(3, 5), torch.tensor([[0, 1], [2, 3], [4, 0]]), r(3, 2)], {"dim": 1}, 0.0),
    "scatter-sum": ("scatter", [r(3, 5), torch.tensor([[0, 0], [2, 3], [4, 4]]), r(3, 2)], {"dim": 1, "reduce": "sum"}, 1e-5),
    "index-put": ("index_put", [r(4, 3), r(2, 3), torch.tensor([0, 2])], {"dims": [0]}, 0.0),
    "index-put-acc": ("index_put", [r(4, 3), r(3), torch.tensor([1, 1, 3])], {"dims": [0], "accumulate": True}, 1e-5),
    "conv3d": ("conv3d", [r(1, 2, 4, 5, 5), C(r(3, 2, 3, 3, 3)), C(r(3))], {"padding": [1, 1, 1]}, 1e-4),
    "conv3d-stride": ("conv3d", [r(1, 2, 4, 5, 5), C(r(4, 1, 2, 2, 2)), None], {"stride": 2, "groups": 2}, 1e-4),
    "conv-transpose1d": (
        "conv_transpose1d",
        [r(2, 3, 6), C(r(3, 4, 3)), C(r(4))],
        {"stride": 2, "padding": 1, "output_padding": 1},
        1e-4,
    ),
    "conv-transpose2d": ("conv_transpose2d", [r(1, 4, 5, 5), C(r(4, 2, 2, 2)), C(r(2))], {"stride": 2}, 1e-4),
    "conv-transpose2d-groups": ("conv_transpose2d", [r(1, 4, 5, 5), C(r(4, 2, 3, 3)), None], {"padding": 1, "groups": 2}, 1e-4),
    "group-norm": ("group_norm", [r(2, 6, 4, 4), C(r(6)), C(r(6))], {"num_groups": 3, "eps": 1e-5}, 1e-4),
    "group-norm-1d-noaffine": ("group_norm", [r(2, 4, 7), None, None], {"num_groups": 4}, 1e-4),
    "max-pool1d": ("max_pool1d", [r(2, 3, 9)], {"kernel_size": [3], "stride": [2], "padding": [1]}, 0.0),
    "max-pool3d": ("max_pool3d", [r(1, 2, 4, 4, 4)], {"kernel_size": [2, 2, 2], "stride": [2, 2, 2]}, 0.0),
    "avg-pool1d": ("avg_pool1d", [r(2, 3, 8)], {"kernel_size": [2], "stride": [2]}, 1e-5),
    "avg-pool3d": ("avg_pool3d", [r(1, 2, 4, 4, 4)], {"kernel_size": [2, 2, 2], "stride": [2, 2, 2]}, 1e-5),
    "adaptive-avg-pool1d": ("adaptive_avg_pool1d", [r(2, 3, 10)], {"output_size": [4]}, 1e-5),
    "adaptive-avg-pool3d": ("adaptive_avg_pool3d", [r(1, 2, 4, 4, 4)], {"output_size": [2, 1, 2]}, 1e-5),
    "adaptive-max-pool2d": ("adaptive_max_pool2d", [r(1, 2, 7, 6)], {"output_size": [3, 4]}, 0.0),
    "interp-nearest": ("interpolate", [r(1, 2, 3, 4)], {"size": [6, 8], "mode": "nearest"}, 0.0),
    "interp-nearest-odd": ("interpolate", [r(1, 2, 3, 4)], {"size": [5, 7], "mode": "nearest"}, 0.0),
    "interp-nearest-1d": ("interpolate", [r(1, 2, 5)], {"size": [10], "mode": "nearest"}, 0.0),
    "interp-bilinear": ("interpolate", [r(1, 2, 3, 4)], {"size": [6, 8], "mode": "linear"}, 1e-5),
    "interp-bilinear-ac": ("interpolate", [r(1, 2, 3, 4)], {"size": [5, 6], "mode": "linear", "align_corners": True}, 1e-5),
    "interp-bicubic": ("interpolate", [r(1, 2, 3, 4)], {"size": [6, 8], "mode": "cubic"}, 1e-5),
    "interp-linear-1d": ("interpolate", [r(1, 2, 5)], {"size": [9], "mode": "linear"}, 1e-5),
    "pad-circular": ("pad", [r(1, 2, 4, 5)], {"pad": [2, 1, 1, 1], "mode": "circular"}, 0.0),
}

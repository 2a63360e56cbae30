"""Every backend that lowers the pruning ops agrees with the interpreter on the same inputs."""

from __future__ import annotations

import pytest
import torch

import bitpress as bp
from bitpress.passes.prune import Prune
from tests.passes.prune.conftest import correlated_batches


class _Mlp(torch.nn.Module):
    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(64, 48, bias=bias)
        self.fc2 = torch.nn.Linear(48, 32, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))


CASES = [
    ("2:4", True, (16, 64)),
    ("4:8", False, (2, 5, 64)),
    ("1:2", True, (1, 64)),
    ("2:16", True, (3, 64)),
    (0.6, True, (2, 3, 64)),
    (0.9, False, (1, 64)),
]


@pytest.fixture(scope="module")
def pruned() -> dict[int, tuple[bp.Graph, torch.Tensor]]:  # type: ignore[name-defined]
    out = {}
    for i, (sp, bias, shape) in enumerate(CASES):
        torch.manual_seed(i)
        m = _Mlp(bias).eval()
        x = correlated_batches(1, d_in=64, rows=shape[0] * (shape[1] if len(shape) == 3 else 1), seed=i)[0][0].reshape(shape)
        cm = bp.compile(m, (x,), passes=[Prune(method="sparsegpt" if i % 2 else "wanda", sparsity=sp)], calibration=[(x,)])
        want = "nm_linear" if isinstance(sp, str) else "sparse_linear"
        assert [n.op for n in cm.graph.nodes if n.op.endswith("linear")] == [want, want]
        out[i] = (cm.graph, x)
    return out


@pytest.mark.parametrize("target", ["llvm", "onnx"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_sparse_ops_match_interpreter(pruned: dict[int, tuple[bp.Graph, torch.Tensor]], target: str, case: int) -> None:  # type: ignore[name-defined]
    g, x = pruned[case]
    ref = bp.compile(g, (x,), target="torch", canonicalize=False)
    cm = bp.compile(g, (x,), target=target, canonicalize=False)
    x2 = torch.randn_like(x)
    for inp in (x, x2):
        torch.testing.assert_close(cm(inp), ref(inp), rtol=1e-5, atol=1e-5)


def test_tvm_kernel_reads_the_compressed_form(pruned: dict[int, tuple[bp.Graph, torch.Tensor]]) -> None:  # type: ignore[name-defined]
    g, x = pruned[0]
    cm = bp.compile(g, (x,), target="llvm", canonicalize=False)
    kernels = cm.executable.info["kernel_schedules"]
    # 16 rows: the row-vectorized kernel, scheduled by its hint, for both layers
    assert sum(v == "hint" and "spmm_nm2x4_rvec" in k for k, v in kernels.items()) == 2
    # the parameters handed to the VM are the compressed arrays: values [48, 32], index bytes [48, 8]
    shapes = [(tuple(t.shape), t.dtype) for t in cm.executable.params_torch]
    assert ((48, 32), torch.float32) in shapes and ((48, 8), torch.uint8) in shapes
    assert not any(s in ((48, 64), (64, 48)) for s, _ in shapes)
    one = bp.compile(
        bp.compile(_Mlp(True).eval(), (x[:1],), passes=[Prune(sparsity="2:4")]).graph, (x[:1],), target="llvm", canonicalize=False
    )
    # one row (decoding): lanes over outputs, arrays in tiles of 16 outputs: values [3, 32, 16], index bytes [3, 8, 16]
    assert any("spmm_nm2x4_ovec16x" in k for k in one.executable.info["kernel_schedules"])
    shapes = [(tuple(t.shape), t.dtype) for t in one.executable.params_torch]
    assert ((3, 32, 16), torch.float32) in shapes and ((3, 8, 16), torch.uint8) in shapes


def test_onnx_model_stores_packed_indices(pruned: dict[int, tuple[bp.Graph, torch.Tensor]]) -> None:  # type: ignore[name-defined]
    g, x = pruned[0]
    cm = bp.compile(g, (x,), target="onnx", canonicalize=False)
    model = cm.executable.model
    inits = {i.name: i for i in model.graph.initializer}
    sizes = sorted(len(i.raw_data) for i in inits.values() if i.data_type == 2)  # uint8
    assert 48 * 64 // 8 in sizes  # fc1: 48 x 32 two-bit codes = 384 bytes
    assert not any(tuple(i.dims) == (48, 64) for i in inits.values())


def test_structured_cnn_on_llvm_and_onnx() -> None:
    from bitpress.models import load_fashion_cnn, load_fashion_mnist

    x, _ = load_fashion_mnist("test", limit=16)
    cm = bp.compile(load_fashion_cnn(), (x,), passes=[Prune(structure="channel", sparsity=0.5)])
    ref = cm(x)
    for target in ("llvm", "onnx"):
        other = bp.compile(cm.graph, (x,), target=target, canonicalize=False)
        torch.testing.assert_close(other(x), ref, rtol=1e-4, atol=1e-4)


def test_cuda_build_generates_gather_kernels(pruned: dict[int, tuple[bp.Graph, torch.Tensor]]) -> None:  # type: ignore[name-defined]
    """Without a GPU here, the CUDA build of the CSR kernel still compiles to CUDA source."""
    from bitpress.backends.tvm.backend import generated_source

    g, x = pruned[4]
    cm = bp.compile(g, (x,), target="cuda", canonicalize=False)
    src = generated_source(cm.executable, "cuda")
    assert "spmm_csr_ovec" in src and "threadIdx.x" in src
    assert all(v == "hint" for k, v in cm.executable.info["kernel_schedules"].items() if "spmm" in k)


def test_nm_on_cuda_is_a_clear_error(pruned: dict[int, tuple[bp.Graph, torch.Tensor]]) -> None:  # type: ignore[name-defined]
    """The N:M kernel crashed on an H100 (session 2): cuda refuses it, naming the op and the targets that have it."""
    from bitpress.compiler.target import LoweringError

    g, x = pruned[0]
    with pytest.raises(LoweringError, match=r"nm_linear.*llvm"):
        bp.compile(g, (x,), target="cuda", canonicalize=False)


@pytest.mark.gpu
def test_sparse_ops_on_cuda(pruned: dict[int, tuple[bp.Graph, torch.Tensor]]) -> None:  # type: ignore[name-defined]
    """Passed on an H100 in session 2."""
    g, x = pruned[4]
    ref = bp.compile(g, (x,), target="torch", canonicalize=False)
    cm = bp.compile(g, (x,), target="cuda", canonicalize=False)
    torch.testing.assert_close(cm(x), ref(x), rtol=1e-5, atol=1e-5)

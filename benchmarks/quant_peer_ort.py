"""Peer: ONNX Runtime's MatMulNBitsQuantizer (4-bit, block 128) on the same SmolLM2, text and windows.

Run: .venv/bin/python benchmarks/quant_peer_ort.py [--eval-windows 24] [--algos default,gptq,hqq]

The fp32 model is bitpress's own ONNX lowering of the imported SmolLM2 graph (inputs [1, 64]),
with transposes of weight initializers folded so every linear is MatMul(x, constant W^T),
which the quantizer needs.  lm_head is excluded, as in benchmarks/quant_smollm2.py.
Algorithms: "default" (ORT's blockwise RTN, asymmetric), "gptq" (the GPTQ port in
onnxruntime.quantization.neural_compressor, calibrated on the same 8 windows), "hqq".
Perplexity is evaluated with onnxruntime on the same first --eval-windows windows.
Needs the `onnx-ir` package (in requirements.txt).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

import bitpress as bp
from bitpress.backends.onnx.backend import lower_to_onnx
from bitpress.models.smollm2 import SmolLMLogits, load_smollm2, perplexity
from bitpress.models.text import english_text, token_windows


def fold_weight_transposes(model: onnx.ModelProto) -> None:
    """Transpose(initializer) -> a transposed initializer (so MatMul reads a constant)."""
    inits = {i.name: i for i in model.graph.initializer}
    keep = []
    for n in model.graph.node:
        if n.op_type == "Transpose" and n.input[0] in inits:
            perm = next((list(a.ints) for a in n.attribute if a.name == "perm"), None)
            arr = numpy_helper.to_array(inits[n.input[0]])
            t = numpy_helper.from_array(np.ascontiguousarray(arr.transpose(perm)), n.output[0])
            model.graph.initializer.append(t)
            continue
        keep.append(n)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    used = {i for n in model.graph.node for i in n.input}
    live = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(live)


def patch_ort_zero_point_packing() -> None:
    """Work around an onnxruntime 1.32 bug in its GPTQ path (neural_compressor.weight_only):
    4-bit zero points are packed two per byte over the flattened [N * k_blocks] array, so a
    row with an odd number of blocks (K = 576 at block 128 -> 5 blocks) cannot be reshaped to
    [N, -1] and quantization fails.  This packs them per row (the MatMulNBits layout:
    [N, ceil(k_blocks / 2)], padded with the default zero point 8)."""
    from onnx import helper
    from onnxruntime.quantization.neural_compressor import weight_only as wo

    orig = wo.make_matmul_weight_only_node

    def fixed(node, weight_shape, num_bits, group_size, k_blocks, q_weight, scale, zero_point, accuracy_level=0):  # type: ignore[no-untyped-def]
        qnode, inits = orig(node, weight_shape, num_bits, group_size, k_blocks, q_weight, scale, None, accuracy_level)
        if zero_point is not None:
            n = weight_shape[1]
            z = np.asarray(zero_point).reshape(n, k_blocks).astype(np.uint8)
            if k_blocks % 2:
                z = np.concatenate([z, np.full((n, 1), 8, dtype=np.uint8)], 1)
            packed = (z[:, ::2] | (z[:, 1::2] << 4)).astype(np.uint8)
            t = helper.make_tensor(node.input[1] + "_zp", onnx.TensorProto.UINT8, packed.shape, packed.tobytes(), raw=True)
            qnode.input.append(t.name)
            inits.append(t)
        return qnode, inits

    wo.make_matmul_weight_only_node = fixed

    # Second bug: the GPTQ path ignores `nodes_to_exclude` (only the RTN path maps excluded
    # nodes to "fp32"), so lm_head was quantized too; give GPTQ the same "fp32" entries.
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    gen = MatMulNBitsQuantizer._generate_q4_node_config

    def with_excluded(self):  # type: ignore[no-untyped-def]
        cfg = gen(self)
        for n in self.nodes_to_exclude:
            cfg[n] = "fp32"
        return cfg

    MatMulNBitsQuantizer._generate_q4_node_config = with_excluded  # type: ignore[method-assign]


def main() -> None:
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        GPTQWeightOnlyQuantConfig,
        HQQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    ap = argparse.ArgumentParser()
    ap.add_argument("--eval-windows", type=int, default=24)
    ap.add_argument("--algos", default="default,gptq,hqq")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/quant_peer_ort.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    patch_ort_zero_point_packing()
    model, tok = load_smollm2()
    text = english_text()
    cal = token_windows(tok, text, 64, 8, offset=100)
    g = bp.compile(SmolLMLogits(model).eval(), (cal[0],), target="torch", quiet=True).graph
    fp = lower_to_onnx(g)
    fold_weight_transposes(fp)
    name_in = fp.graph.input[0].name
    lm_head = [n.name for n in fp.graph.node if n.op_type == "MatMul" and "lm_head" in n.name]
    tmp = Path(tempfile.mkdtemp(prefix="ort-peer-"))
    onnx.save(fp, str(tmp / "fp32.onnx"), save_as_external_data=True, location="fp32.data")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{name_in: w.numpy()} for w in cal])

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self.it, None)

        def rewind(self) -> None:
            self.__init__()  # type: ignore[misc]

    for algo in args.algos.split(","):
        t0 = time.perf_counter()
        if algo == "fp32":
            path = tmp / "fp32.onnx"
        else:
            cfg = {
                "default": lambda: DefaultWeightOnlyQuantConfig(block_size=128, is_symmetric=False),
                "gptq": lambda: GPTQWeightOnlyQuantConfig(calibration_data_reader=Reader(), percdamp=0.01, block_size=128),
                "hqq": lambda: HQQWeightOnlyQuantConfig(block_size=128, bits=4),
            }[algo]()
            q = MatMulNBitsQuantizer(
                onnx.load(str(tmp / "fp32.onnx")), bits=4, block_size=128, is_symmetric=False, nodes_to_exclude=lm_head, algo_config=cfg
            )
            q.process()
            path = tmp / f"{algo}.onnx"
            q.model.save_model_to_file(str(path), use_external_data_format=True)
        tq = time.perf_counter() - t0
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        n_nbits = sum(1 for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type == "MatMulNBits")

        def fn(ids: torch.Tensor, sess=sess) -> torch.Tensor:  # type: ignore[no-untyped-def]
            return torch.from_numpy(sess.run(None, {name_in: ids.numpy()})[0])

        t1 = time.perf_counter()
        ppl = perplexity(fn, tok, text, seq_len=64, max_windows=args.eval_windows)
        size = sum(f.stat().st_size for f in tmp.iterdir() if f.name.startswith(path.stem))
        rec = {
            "peer": f"onnxruntime {ort.__version__} MatMulNBitsQuantizer",
            "algo": algo,
            "bits": 4,
            "block_size": 128,
            "ppl": round(ppl, 3),
            "matmulnbits_nodes": n_nbits,
            "files_bytes": size,
            "quantize_seconds": round(tq, 1),
            "eval_seconds": round(time.perf_counter() - t1, 1),
            "eval_windows": args.eval_windows,
        }
        print(json.dumps(rec), flush=True)
        with Path(args.out).open("a") as f:
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()

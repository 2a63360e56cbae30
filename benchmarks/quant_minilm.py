"""MiniLM (all-MiniLM-L6-v2) static W8A8: min-max vs percentile vs SmoothQuant, against ONNX
Runtime's quantize_static (QDQ, per-channel int8 weights, int8 activations) as the peer.

Run: .venv/bin/python benchmarks/quant_minilm.py [--threads 2] [--repeat 20]

Accuracy: cosine similarity of mean-pooled sentence embeddings to fp32 on SENTENCES[32:]
(calibration: SENTENCES[:32]); batches of 8 sentences, 32 tokens.  Speed: one batch,
fp32 vs W8A8 on TVM llvm and on ONNX Runtime (bitpress's own ONNX lowering), and the
peer's int8 model in ONNX Runtime.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
from quant_peer_ort import fold_weight_transposes  # benchmarks/ is on sys.path when run as a script

import bitpress as bp
from bitpress.backends.onnx.backend import lower_to_onnx
from bitpress.models.minilm import SENTENCES, MiniLMEncoder, encode_batch, load_minilm, mean_pool

Q = bp.passes.Quantize
CONFIGS = {
    "w8a8-minmax": Q(method="rtn", bits=8, group_size=None, act_bits=8, observer="minmax"),
    "w8a8-percentile": Q(method="rtn", bits=8, group_size=None, act_bits=8, observer="percentile"),
    "w8a8-smoothquant-0.5": Q(method="smoothquant", bits=8, group_size=None, act_bits=8, alpha=0.5),
    "w8a8-smoothquant-0.8": Q(method="smoothquant", bits=8, group_size=None, act_bits=8, alpha=0.8),
    "w8a8-smoothquant-0.5-percentile": Q(method="smoothquant", bits=8, group_size=None, act_bits=8, alpha=0.5, observer="percentile"),
}


def cosine(run, batches, refs) -> float:  # type: ignore[no-untyped-def]
    sims = []
    for (ids, mask), ref in zip(batches, refs, strict=True):
        e = mean_pool(run(ids, mask), mask)
        sims.append(torch.nn.functional.cosine_similarity(e, ref, dim=-1))
    return float(torch.cat(sims).mean())


def timeit(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--peer-only", action="store_true", help="only the onnxruntime quantize_static rows")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_minilm()
    enc = MiniLMEncoder(model).eval()
    cal = [encode_batch(tok, SENTENCES[i : i + 8], 32) for i in range(0, 32, 8)]
    test = [encode_batch(tok, SENTENCES[i : i + 8], 32) for i in range(32, 64, 8)]
    with torch.no_grad():
        refs = [mean_pool(enc(*b), b[1]) for b in test]
    base = bp.compile(enc, cal[0], target="torch", quiet=True)
    print("| config | mean cosine to fp32 (bitpress interpreter) | stored bytes |")
    print("|---|---|---|")
    print(f"| fp32 | {cosine(base, test, refs):.5f} | {base.report.total_bytes:,} |")
    compiled = {}
    for name, q in ({} if args.peer_only else CONFIGS).items():
        cm = bp.compile(base.graph.clone(), cal[0], passes=[q], target="torch", calibration=cal, canonicalize=False, quiet=True)
        compiled[name] = cm
        print(f"| {name} | {cosine(cm, test, refs):.5f} | {cm.report.total_bytes:,} |", flush=True)

    # the peer: ONNX Runtime static quantization of the same fp32 graph
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    tmp = Path(tempfile.mkdtemp(prefix="minilm-ort-"))
    fp_model = lower_to_onnx(base.graph)
    # linear weights as MatMul(x, constant W^T): otherwise ORT sees Transpose(W) as an activation
    # and quantizes it per tensor with calibrated ranges instead of per-channel int8 weights
    fold_weight_transposes(fp_model)
    onnx.save(fp_model, str(tmp / "fp32.onnx"))
    names = [i.name for i in fp_model.graph.input]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{n: t.numpy() for n, t in zip(names, b, strict=True)} for b in cal])

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self.it, None)

    # ORT's default op list also quantizes Add/Mul/Softmax/Gather/...: the attention-mask Add
    # (scores + finfo.min on padding) then gets an int8 range of ~[-3.4e38, x], which wipes out
    # every attention score.  ORT's own transformer recipe quantizes MatMul only, which is also
    # what bitpress quantizes (the linear layers).
    peer_rows = []
    variants = (
        ("all ops, act QInt8", QuantType.QInt8, None),
        ("all ops, act QUInt8", QuantType.QUInt8, None),
        ("MatMul only, act QInt8", QuantType.QInt8, ["MatMul"]),
        ("MatMul only, act QUInt8", QuantType.QUInt8, ["MatMul"]),
    )
    for label, act_type, ops in variants:
        out = tmp / f"ort-{label.replace(' ', '_').replace(',', '')}.onnx"
        quantize_static(
            str(tmp / "fp32.onnx"),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=act_type,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=ops,
        )
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        sess = ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])

        def run_ort(ids, mask, sess=sess):  # type: ignore[no-untyped-def]
            return torch.from_numpy(sess.run(None, {names[0]: ids.numpy(), names[1]: mask.numpy()})[0])

        peer_rows.append((label, cosine(run_ort, test, refs), out.stat().st_size, sess))
        print(
            f"| peer: onnxruntime quantize_static (QDQ, per-channel int8 weights, {label}) | {peer_rows[-1][1]:.5f} | {out.stat().st_size:,} (file) |"
        )

    if args.peer_only:
        return
    # bitpress's W8A8 models on onnxruntime: agreement with the interpreter (the oracle)
    print("\n| config | target | cosine to fp32 | max abs diff vs interpreter | embedding cosine vs interpreter (min) |")
    print("|---|---|---|---|---|")
    for name in ("w8a8-minmax", "w8a8-smoothquant-0.8"):
        cm_o = bp.compile(compiled[name].graph.clone(), cal[0], target="onnx", canonicalize=False, quiet=True)
        diff, sims = 0.0, []
        for ids_, mask_ in test:
            want, got = compiled[name](ids_, mask_), cm_o(ids_, mask_)
            diff = max(diff, float((want - got).abs().max()))
            sims.append(torch.nn.functional.cosine_similarity(mean_pool(got, mask_), mean_pool(want, mask_), dim=-1))
        print(f"| {name} | onnx | {cosine(cm_o, test, refs):.5f} | {diff:.4f} | {float(torch.cat(sims).min()):.6f} |", flush=True)
    if args.no_speed:
        return
    ids, mask = test[0]
    print("\n| model | target | ms / batch of 8 x 32 tokens |")
    print("|---|---|---|")
    for label, g in (("fp32", base.graph), ("w8a8-smoothquant-0.8", compiled["w8a8-smoothquant-0.8"].graph)):
        for target in ("llvm", "onnx"):
            cm = bp.compile(g.clone(), (ids, mask), target=target, canonicalize=False, quiet=True)
            print(f"| {label} | {target} | {timeit(lambda cm=cm: cm(ids, mask), args.repeat):.2f} |", flush=True)
    feeds = {names[0]: ids.numpy(), names[1]: mask.numpy()}
    for label, _, _, sess in peer_rows:
        print(f"| peer ORT int8 (act {label}) | onnxruntime | {timeit(lambda s=sess: s.run(None, feeds), args.repeat):.2f} |")
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    sess = ort.InferenceSession(str(tmp / "fp32.onnx"), so, providers=["CPUExecutionProvider"])
    print(f"| fp32 ONNX | onnxruntime | {timeit(lambda: sess.run(None, feeds), args.repeat):.2f} |")


if __name__ == "__main__":
    main()

"""Static int8 ranges for every activation, not only the layers' inputs: `Quantize(act_bits=8, act_scope="all")`.

`act_scope="layers"` (the default) quantizes what the W8A8 linear/conv layers read and write;
everything between them stays float (layer norms, residual adds, softmax, matmuls of two
activations).  `act_scope="all"` also gives those activations calibrated int8 encodings, as TFLite
full-integer quantization does: after the layers are rewritten, a quantize_act -> dequantize_act
pair (QDQ) goes on each float activation that is not already int8 codes, so that a backend can run
the whole graph on integers (the MCU backend's `integer_glue_rules` turn each
quantize(op(dequantize(q), ...)) into an integer kernel) while every other backend just runs the
QDQ ops.  Ranges come from one interpreter pass over the calibration batches on the W8A8 graph,
with the observer of the layer activations (`observer`: minmax, percentile, mse).

Which values get a QDQ pair:

- float graph inputs, and the outputs of float ops (residual adds, layer norms, softmax, matmuls,
  non-monotone elementwise maps such as gelu);
- not values that already are int8 codes: constants, dequantize outputs, and layout ops, relu and
  max pooling applied to such codes (a backend computes those on the codes exactly);
- not a value every use of which is a quantize_act (through layout ops): it is quantized already;
- not a value used only as `x * c` or `x / c` with a scalar constant c: the product is quantized
  instead, and the constant folds into the producer's requantization (attention's 1/sqrt(d));
- softmax outputs get the fixed encoding of TFLite's int8 softmax: scale 1/256, zero point -128;
- fused attention (`sdpa`, as torch.export gives for F.scaled_dot_product_attention and HF models) is
  first written out as q @ k^T * scale (+ mask), softmax, @ v, so its scores and probabilities get
  encodings too (`decompose_attention`; causal / grouped-query attention stays fused).

Requires: act_bits=8 and calibration data.  Ensures: every float activation read by a
non-quantize op is dequantize(int8 codes), or an exact function (layout, relu, max pool) of one.
"""

from __future__ import annotations

from typing import Any

import torch

from bitpress.compiler.interpreter import run
from bitpress.compiler.ir import Graph, Node, Value
from bitpress.compiler.pass_manager import PassContext, PassResult
from bitpress.compiler.rewrite import ExplainEvent
from bitpress.formats.integer import SOFTMAX_SCALE, SOFTMAX_ZERO_POINT
from bitpress.passes.quantize import _numerics as nq

__all__ = ["ACT_SCOPES", "SOFTMAX_SCALE", "SOFTMAX_ZERO_POINT", "quantize_activations"]

ACT_SCOPES = ("layers", "all")
LAYOUT_OPS = frozenset({"reshape", "flatten", "squeeze", "unsqueeze", "dropout", "identity", "transpose", "permute", "slice", "select"})
# maps a backend applies to int8 codes exactly (codes in, codes out of the same encoding)
EXACT_ON_CODES = LAYOUT_OPS | {"relu", "max_pool2d", "split"}
_RULE = "quantize-activation"


def check_act_scope(act_scope: str, act_bits: int | None) -> None:
    """Validate the option (called from Quantize.__post_init__)."""
    if act_scope not in ACT_SCOPES:
        raise ValueError(f"Quantize: act_scope must be one of {ACT_SCOPES}, got {act_scope!r}")
    if act_scope == "all" and act_bits != 8:
        raise ValueError("Quantize: act_scope='all' quantizes every activation to int8: set act_bits=8 (and bits=8)")


def _is_codes(v: Value) -> bool:
    """v is int8 codes already, or an exact function of them (dequantize, then layout / relu / max pool)."""
    while True:
        if v.is_const:
            return True
        p = v.producer
        if p is None:
            return False
        if p.op == "dequantize_act":
            return True
        if p.op not in EXACT_ON_CODES or p.inputs[0] is None:
            return False
        v = p.inputs[0]


def _uses(v: Value) -> list[Node]:
    """The users of v, looking through layout ops."""
    out: list[Node] = []
    for u in v.users:
        if u.op in LAYOUT_OPS and u.inputs[0] is v:
            out += _uses(u.output)
        else:
            out.append(u)
    return out


def _is_output(g: Graph, v: Value) -> bool:
    """v is a graph output, or becomes one through layout ops only."""
    if any(o is v for o in g.outputs):
        return True
    return any(u.op in LAYOUT_OPS and u.inputs[0] is v and _is_output(g, u.output) for u in v.users)


def _scalar_const(v: Value | None) -> bool:
    return v is not None and v.is_const and v.numel == 1 and v.dtype.startswith("float")


def _scaled_only(v: Value) -> bool:
    """Every use of v is x * c or x / c with a scalar constant c (the product is what gets quantized)."""
    if not v.users:
        return False
    for u in v.users:
        if u.op == "mul" and len(u.inputs) == 2:
            other = u.inputs[1] if u.inputs[0] is v else u.inputs[0]
            if not _scalar_const(other):
                return False
        elif u.op == "div" and len(u.inputs) == 2 and u.inputs[0] is v:
            if not _scalar_const(u.inputs[1]):
                return False
        else:
            return False
    return True


def _why_not(g: Graph, v: Value) -> str | None:
    """None when v needs a QDQ pair, else why not."""
    if not v.dtype.startswith("float"):
        return "not a float value"
    if _is_codes(v):
        return "already int8 codes"
    is_out = _is_output(g, v)
    uses = _uses(v)
    if uses and not is_out and all(u.op == "quantize_act" for u in uses):
        return "quantized by its users"
    if not is_out and _scaled_only(v):
        return "scaled by a constant first: the product is quantized"
    if not uses and not is_out:
        return "unused"
    return None


def _targets(g: Graph) -> list[Value]:
    vals = [v for v in g.inputs]
    vals += [n.output for n in g.nodes if len(n.outputs) == 1 and n.op not in LAYOUT_OPS]
    return [v for v in vals if _why_not(g, v) is None]


def _observe(g: Graph, values: list[Value], batches: list[tuple[torch.Tensor, ...]], keep: int) -> dict[str, dict[str, Any]]:
    """min, max and up to `keep` sample tensors of each value over the calibration batches."""
    stats: dict[str, dict[str, Any]] = {v.name: {"lo": float("inf"), "hi": float("-inf"), "samples": []} for v in values}
    wanted = {id(v): v.name for v in values}

    def record(name: str, t: torch.Tensor) -> None:
        st = stats[name]
        t = t.detach().float()
        st["lo"], st["hi"] = min(st["lo"], float(t.min())), max(st["hi"], float(t.max()))
        if len(st["samples"]) < keep:
            st["samples"].append(t.flatten())

    def observer(n: Node, args: list[Any], outs: list[torch.Tensor]) -> None:
        for o, t in zip(n.outputs, outs, strict=True):
            if id(o) in wanted:
                record(wanted[id(o)], t)

    for batch in batches:
        for v, t in zip(g.inputs, batch, strict=True):
            if id(v) in wanted:
                record(v.name, t)
        run(g, list(batch), observer=observer)
    return stats


def decompose_attention(g: Graph, ctx: PassContext, pass_name: str) -> int:
    """sdpa(q, k, v, mask) -> matmul(softmax(matmul(q, k^T) * scale + mask), v), so that the scores and
    the probabilities are activations that get their own int8 encodings.  The same function up to float
    rounding (the fused op sums in another order); causal or grouped-query attention and boolean masks
    are left fused (a backend without a lowering for them says so)."""
    done = 0
    for n in list(g.nodes):
        if n.op != "sdpa":
            continue
        q, k, v = n.inputs[:3]
        mask = n.inputs[3] if len(n.inputs) > 3 else None
        why = None
        if n.attrs.get("is_causal") or n.attrs.get("enable_gqa"):
            why = "causal or grouped-query attention"
        elif mask is not None and not mask.dtype.startswith("float"):
            why = f"a {mask.dtype} mask"
        elif q is None or k is None or v is None or q.ndim < 2:
            why = "operands of unknown rank"
        if why is not None:
            ctx.explain.add(ExplainEvent(pass_name, "decompose-attention", n.name, n.op, "declined", why))
            continue
        assert q is not None and k is not None and v is not None
        scale = n.attrs.get("scale")
        scale = float(scale) if scale is not None else q.shape[-1] ** -0.5
        with g.inserting_before(n):
            kt = g.call("transpose", [k], {"dim0": -2, "dim1": -1}, name=f"{n.name}.k_t")
            s = g.call("matmul", [q, kt], {}, name=f"{n.name}.qk")
            s = g.call("mul", [s, g.add_const(torch.tensor(scale, dtype=torch.float32), f"{n.name}.scale")], {}, name=f"{n.name}.scores")
            if mask is not None:
                s = g.call("add", [s, mask], {}, name=f"{n.name}.masked")
            prob = g.call("softmax", [s], {"dim": -1}, name=f"{n.name}.probs")
            y = g.call("matmul", [prob, v], {}, name=f"{n.name}.pv")
        g.replace_all_uses(n.output, y)
        g.erase_node(n)
        ctx.explain.add(
            ExplainEvent(pass_name, "decompose-attention", n.name, n.op, "fired", f"explicit q k^T * {scale:.4g}, softmax, @ v")
        )
        done += 1
    return done


def quantize_activations(res: PassResult, cfg: Any, ctx: PassContext) -> PassResult:
    """Insert calibrated QDQ pairs on the float activations of `res.graph` (see the module docstring).

    `cfg` is the Quantize pass (its `observer`, `calib_samples` and `name` are used)."""
    g = res.graph
    decomposed = decompose_attention(g, ctx, cfg.name)
    values = _targets(g)
    if not values:
        return PassResult(g, res.modified or decomposed > 0, res.stats)
    batches = ctx.require_calibration(f"{cfg.name} (act_scope='all')")
    stats = _observe(g, values, batches, cfg.calib_samples)
    for v in values:
        st = stats[v.name]
        p = v.producer
        if p is not None and p.op == "softmax":
            scale, zp = SOFTMAX_SCALE, SOFTMAX_ZERO_POINT
            how = "fixed softmax encoding"
        else:
            if st["lo"] > st["hi"]:
                raise ValueError(f"{cfg.name}: activation {v.name} was not reached by the calibration data")
            samples = torch.cat(st["samples"]) if st["samples"] else torch.empty(0)
            scale, zp = nq.act_qparams(samples, st["lo"], st["hi"], cfg.observer)
            how = f"{cfg.observer} range [{st['lo']:.4g}, {st['hi']:.4g}]"
        _insert_qdq(g, v, scale, zp)
        ctx.explain.add(
            ExplainEvent(cfg.name, _RULE, v.name, p.op if p is not None else "input", "fired", f"int8 scale {scale:.4g} zp {zp} ({how})")
        )
    return PassResult(g, True, {**res.stats, "activations_quantized": len(values)})


def _insert_qdq(g: Graph, v: Value, scale: float, zp: int) -> None:
    p = v.producer
    before = p.next if p is not None else next(iter(g.nodes), None)
    users = list(v.users)
    outs = [i for i, o in enumerate(g.outputs) if o is v]
    with g.inserting_before(before):
        q = g.call("quantize_act", [v], {"scale": scale, "zero_point": zp}, name=f"{v.name}.act_quantize")
        d = g.call("dequantize_act", [q], {"scale": scale, "zero_point": zp}, name=f"{v.name}.act_dequantize")
    assert q.producer is not None
    q.producer.meta["act_bits"] = 8
    for u in users:
        u.replace_input(v, d)
    if outs:
        g.outputs = [d if i in outs else o for i, o in enumerate(g.outputs)]

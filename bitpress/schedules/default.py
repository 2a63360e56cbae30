"""Default (untuned) schedules: one rule per kernel shape, first match wins.

CPU (llvm) rules, in order:
  cpu-gemm         a single reduction block S..S R..R (matmul, batched matmul, conv, dense
                   with fused prologue/epilogue): register tile mi x ni of the output with
                   ni a multiple of the vector width, reduction loops between the tile and
                   the parallel outer loops, accumulate in a tile-sized buffer, write back
                   through the fused epilogue; inner axis vectorized, outer axes parallel.
  dlight-cpu-reduction  softmax / norms (DLight's CPU rule), unless it would recompute a
                   reduction per output element;
  cpu-rowwise-reduction  then: each block alone, reductions parallel over rows, elementwise
                   blocks vectorized.
  cpu-injective    elementwise / layout kernels: inline, fuse, parallel outer, vectorize inner.
  cpu-fallback     anything else: parallelize the leading spatial loop of each block.
CUDA rules: DLight GPU rules (Matmul, GEMV, Reduction, GeneralReduction, Fallback).

A lowering may steer this with `ctx.schedule_hint(name, rule=..., schedule=fn)`: `rule`
names one of the rules above (or "none" to leave the kernel as written), `schedule` is a
callable `fn(sch: s_tir.Schedule, target) -> None` applied to the kernel instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

__all__ = ["CPU_RULES", "apply_default_schedules", "schedule_function"]

VEC_BITS = 256  # AVX2; the rule reads the target's width when it can


def _vec_lanes(target: Any, dtype_bits: int) -> int:
    # the target's ISA, not LLVM's get_vector_width (which says 512 for znver3, an AVX2 CPU)
    try:
        from bitpress.schedules.isa import CpuIsa

        bits = CpuIsa.of(target).vector_bits if target.kind.name == "llvm" else VEC_BITS
    except Exception:
        bits = VEC_BITS
    if bits <= 0:
        bits = 128
    return max(bits // max(dtype_bits, 8), 1)


def _vector_registers(target: Any) -> int:
    if target.kind.name != "llvm":
        return 32
    from bitpress.schedules.isa import CpuIsa

    try:
        return CpuIsa.of(target).vector_registers
    except Exception:
        return 16


def _register_tile(n_ext: int, m_ext: int, lanes: int, registers: int, n_tile: int | None, m_tiles: tuple[int, ...]) -> tuple[int, int]:
    """(ni, mi): the output tile held in registers, mi rows x ni columns (ni / lanes vectors).

    mi * nv accumulators + nv operand vectors + 1 broadcast fit the target's vector registers
    (16 on AVX2: 6 x 16 floats; 32 on AVX-512: 8 x 32), largest tile first; ni a divisor of
    the column extent (n_tile when the weights were packed in strips of that width).
    """
    if n_tile is not None and n_ext % n_tile == 0:
        n_opts: tuple[int, ...] = (n_tile,)
    else:
        n_opts = tuple(c for c in (lanes * 3, lanes * 2, lanes, lanes // 2, 4, 2, 1) if c >= 1 and n_ext % c == 0) or (1,)
    best: tuple[int, int, int] | None = None  # (accumulators, ni, mi)
    for ni in n_opts:
        nv = max(ni // lanes, 1)
        for mi in (*m_tiles, 1):
            if m_ext % mi or (mi * nv + nv + 1 > registers and mi > 1):
                continue
            if best is None or mi * nv > best[0] or (mi * nv == best[0] and ni > best[1]):
                best = (mi * nv, ni, mi)
            break
    assert best is not None
    return best[1], best[2]


def _largest_divisor(n: int, candidates: tuple[int, ...]) -> int:
    for c in candidates:
        if c <= n and n % c == 0:
            return c
    return 1


def _extent(sch: Any, loop: Any) -> int | None:
    from tvm import tirx

    e = sch.get(loop).extent
    return int(e) if isinstance(e, tirx.IntImm) else None


def _out_bits(sch: Any, block: Any) -> int:
    st = sch.get(block)
    return int(st.writes[0].source.dtype.bits) if st.writes else 32


def _vectorize_inner(sch: Any, block: Any, lanes: int) -> None:
    loops = sch.get_loops(block)
    if not loops:
        return
    ext = _extent(sch, loops[-1])
    if ext is None or ext < 2:
        return
    f = _largest_divisor(ext, (lanes * 2, lanes, lanes // 2, 4, 2))
    if f < 2:
        return
    if f < ext:
        _, inner = sch.split(loops[-1], factors=[None, f])
    else:
        inner = loops[-1]
    with contextlib.suppress(Exception):
        sch.vectorize(inner)


def _try_parallel(sch: Any, loop: Any) -> bool:
    try:
        sch.parallel(loop)
        return True
    except Exception:
        return False


# ---------------------------------------------------------------------------- CPU rules


def cpu_gemm(
    func: Any,
    target: Any,
    n_axis: int | None = None,
    m_axis: int | None = None,
    m_tiles: tuple[int, ...] = (4, 6, 3, 2),
    acc_scope: str = "global",
    n_tile: int | None = None,
    m_multiple: int | None = None,
) -> Any:
    """C[s..] = sum_r A[..] * B[..]  ->  parallel(s_outer, mo, no) . r . unroll(mi) . vectorize(ni)

    n_axis / m_axis pick the spatial axes of the vectorized and the unrolled tile dimension
    (default: the last two); m_tiles are the register-tile heights tried, largest first.
    """
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    if not infos:
        return None
    reds = [b for b in infos if not b.is_injective()]
    if len(reds) != 1:
        return None
    main = reds[0]
    dk = main.dom_kind()
    p = len(dk) - len(dk.lstrip("S"))
    if p < 1 or dk[p:] != "R" * (len(dk) - p) or len(dk) == p:
        return None
    if len(sch.get(main.block_rv).reads) < 2:
        return None  # a plain reduction (sum/mean), not a contraction
    idx = infos.index(main)
    # prologue (padding, transposes): inline into the contraction
    for b in reversed(infos[:idx]):
        try:
            sch.compute_inline(b.block_rv)
        except Exception:
            return None
    # epilogue chain: inline into its last block, then into the write-back
    epi = infos[idx + 1 :]
    if any(not b.is_injective() for b in epi):
        return None
    for b in epi[:-1]:
        try:
            sch.compute_inline(b.block_rv)
        except Exception:
            return None
    loops = sch.get_loops(main.block_rv)
    if len(loops) != len(dk):
        return None
    exts = [_extent(sch, lp) for lp in loops]
    if any(e is None for e in exts[p:]):
        return None  # symbolic spatial extents (a batch) are tiled with a guard below; reductions must be static
    lanes = _vec_lanes(target, _out_bits(sch, main.block_rv))
    wb = sch.cache_write(main.block_rv, 0, acc_scope)
    if epi and same_write_shape(sch, epi[-1].block_rv, main.block_rv):
        # if it cannot be inlined, the epilogue stays a separate (injective) loop nest.  A slicing
        # epilogue (x[:, 0] of the GEMM's output) must not be: TVM inlines it into the write-back
        # as if it covered every row, which writes the other rows out of bounds
        with contextlib.suppress(Exception):
            sch.reverse_compute_inline(epi[-1].block_rv)
    loops = sch.get_loops(main.block_rv)
    spatial, reduce = loops[:p], loops[p:]
    na = p - 1 if n_axis is None else n_axis
    ma = p - 2 if m_axis is None else m_axis
    if not (0 <= na < p) or (p >= 2 and (not (0 <= ma < p) or ma == na)):
        return None
    n_ext = exts[na]
    if n_ext is None:
        return None
    m_ext = exts[ma] if p >= 2 else 1
    # a symbolic row count (the batch): one row per tile.  A taller tile needs a guard on its
    # last rows, and the guarded loads keep the accumulators out of registers (measured on
    # AVX2: 6 guarded rows were no faster at batch 32 than 1 row, and 1.6x slower at batch 1)
    # A lowering that pads the rows to a multiple of `m_multiple` (rows past the batch computed
    # and never written out) gets full-height tiles with no guard.
    if m_ext is None and m_multiple is not None and p >= 2:
        heights = tuple(t for t in m_tiles if m_multiple % t == 0)
        ni, mi = _register_tile(n_ext, m_multiple, lanes, _vector_registers(target), n_tile, heights or (1,))
    else:
        ni, mi = _register_tile(
            n_ext, m_ext or 1, lanes, _vector_registers(target), n_tile, m_tiles if p >= 2 and m_ext is not None else (1,)
        )
    if na != p - 1:
        # the vectorized axis is not the output's last (conv: channels of NCHW): lay the
        # accumulator out with it innermost, so the tile is contiguous vectors that LLVM keeps
        # in registers across the reduction instead of strided gathers and scatters
        perm = [i for i in range(p) if i != na] + [na]
        sch.transform_layout(main.block_rv, ("write", 0), lambda *i: tuple(i[j] for j in perm))
    no, ni_l = sch.split(spatial[na], factors=[None, ni])
    if p >= 2:
        mo, mi_l = sch.split(spatial[ma], factors=[None, mi])
        rest = [lp for i, lp in enumerate(spatial) if i not in (na, ma)]
        # weight strip (no) outside the row tiles (mo): each strip is read once and stays in
        # cache while every row tile uses it; activations are the smaller operand in inference
        outer = [*rest, no, mo]
    else:
        mi_l = None
        outer = [no]
    inner = [mi_l, ni_l] if mi_l is not None else [ni_l]
    sch.reorder(*outer, *reduce, *inner)
    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    sch.parallel(fused)
    sch.reverse_compute_at(wb, fused, preserve_unit_loops=True)
    if mi_l is not None:
        sch.unroll(mi_l)
    if ni > 1:
        sch.vectorize(ni_l)
    init = sch.decompose_reduction(main.block_rv, reduce[0])
    if ni > 1:
        _vectorize_inner(sch, init, lanes)
    # the write-back (with the fused epilogue, if any)
    _vectorize_inner(sch, wb, lanes)
    # an epilogue that could not be inlined: give it the injective schedule
    for b in _root_blocks(sch):
        if len(sch.get_loops(b)) and not _is_scheduled_block(sch, b):
            _schedule_injective_block(sch, b, lanes)
    return sch


def same_write_shape(sch: Any, a: Any, b: Any) -> bool:
    """True when blocks `a` and `b` write buffers of the same shape (reverse_compute_inline of `a`
    into its producer `b` is then a 1:1 epilogue, not a slice of `b`'s output)."""
    sa = [int(x) if hasattr(x, "value") or isinstance(x, int) else str(x) for x in sch.get(a).writes[0].source.shape]
    sb = [int(x) if hasattr(x, "value") or isinstance(x, int) else str(x) for x in sch.get(b).writes[0].source.shape]
    return sa == sb


def _root_blocks(sch: Any) -> list[Any]:
    root = sch.get_sblock("root") if _has_root(sch) else None
    if root is None:
        return []
    return list(sch.get_child_blocks(root))


def _has_root(sch: Any) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except Exception:
        return False


def _is_scheduled_block(sch: Any, block: Any) -> bool:
    from tvm import tirx

    for lp in sch.get_loops(block):
        kind = sch.get(lp).kind
        if kind in (tirx.ForKind.PARALLEL, tirx.ForKind.VECTORIZED):
            return True
    return False


def _schedule_injective_block(sch: Any, block: Any, lanes: int) -> None:
    loops = sch.get_loops(block)
    if not loops:
        return
    static = [_extent(sch, lp) is not None for lp in loops]
    if not all(static) and static[-1]:
        # symbolic outer extents (a batch): vectorize the static trailing loops, parallel over the rest
        k = len(loops)
        while k > 0 and static[k - 1]:
            k -= 1
        tail = sch.fuse(*loops[k:]) if len(loops) - k > 1 else loops[k]
        head = sch.fuse(*loops[:k]) if k > 1 else loops[0]
        ext = _extent(sch, tail)
        v = _largest_divisor(ext or 1, (lanes * 2, lanes, lanes // 2, 4, 2))
        if v > 1:
            if ext is not None and ext > v:
                _, inner = sch.split(tail, factors=[None, v])
                sch.vectorize(inner)
            else:
                sch.vectorize(tail)
        _try_parallel(sch, head)
        return
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    ext = _extent(sch, fused)
    if ext is None:
        _try_parallel(sch, fused)
        return
    v = _largest_divisor(ext, (lanes * 2, lanes, lanes // 2, 4, 2))
    if v > 1 and ext > v:
        outer, inner = sch.split(fused, factors=[None, v])
        if ext // v >= 2 and ext >= 4096:
            _try_parallel(sch, outer)
        sch.vectorize(inner)
    elif v > 1:
        sch.vectorize(fused)
    elif ext >= 4096:
        _try_parallel(sch, fused)


def cpu_injective(func: Any, target: Any) -> Any:
    """y[i..] = f(x[g(i..)])  ->  fuse . parallel(outer) . vectorize(inner)"""
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import normalize_prim_func
    from tvm.s_tir.dlight.base.common_schedules import try_inline

    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    if not infos or any(not b.is_injective() for b in infos):
        return None
    rest = try_inline(sch, list(infos))
    for b in rest:
        _schedule_injective_block(sch, b.block_rv, _vec_lanes(target, _out_bits(sch, b.block_rv)))
    return sch


def cpu_fallback(func: Any, target: Any) -> Any:
    """any kernel  ->  parallel(leading spatial loop) per block"""
    from tvm import s_tir, tirx

    sch = s_tir.Schedule(func)
    try:
        blocks = _root_blocks(sch)
    except Exception:
        return None
    done = False
    for b in blocks:
        loops = sch.get_loops(b)
        if not loops:
            continue
        st = sch.get(b)
        if not st.iter_vars or st.iter_vars[0].iter_type != tirx.IterVar.DataPar:
            continue
        ext = _extent(sch, loops[0])
        if ext is not None and ext >= 2:
            done = _try_parallel(sch, loops[0]) or done
    return sch if done else None


def _dlight_cpu_reduction(func: Any, target: Any) -> Any:
    from tvm.s_tir import dlight as dl

    res = dl.cpu.Reduction().apply(func, target, False)
    sch = res[0] if isinstance(res, list) else res
    if sch is not None and _recomputes(sch):
        return None
    return sch


def _recomputes(sch: Any) -> bool:
    """Whether some reduction block runs more often than its iteration domain.

    DLight's CPU reduction rule computes a norm's reduction at the epilogue's spatial
    loop when the epilogue has axes the reduction lacks (RMSNorm [1, 1, 576]: the mean
    over 576 was recomputed for each of the 576 outputs, 155 us instead of ~1 us).
    """
    from tvm import tirx

    for b in _root_blocks(sch) + [c for r in _root_blocks(sch) for c in _descendants(sch, r)]:
        st = sch.get(b)
        if not any(iv.iter_type == tirx.IterVar.CommReduce for iv in st.iter_vars):
            continue
        runs = 1
        for lp in sch.get_loops(b):
            e = _extent(sch, lp)
            runs *= e if e is not None else 1
        dom = 1
        for iv in st.iter_vars:
            e = iv.dom.extent
            dom *= int(e) if isinstance(e, tirx.IntImm) else 1
        if runs > dom:
            return True
    return False


def _descendants(sch: Any, block: Any) -> list[Any]:
    try:
        kids = list(sch.get_child_blocks(block))
    except Exception:
        return []
    return kids + [d for k in kids for d in _descendants(sch, k)]


def cpu_rowwise_reduction(func: Any, target: Any) -> Any:
    """norms / softmax:  each block on its own, reductions parallel over rows, elementwise blocks vectorized"""
    from tvm import s_tir, tirx

    sch = s_tir.Schedule(func)
    blocks = _root_blocks(sch)
    if not blocks:
        return None
    has_red = False
    for b in blocks:
        st = sch.get(b)
        loops = sch.get_loops(b)
        kinds = [iv.iter_type for iv in st.iter_vars]
        if any(k == tirx.IterVar.CommReduce for k in kinds):
            has_red = True
            n_sp = len(kinds) - len([k for k in kinds if k == tirx.IterVar.CommReduce])
            if len(loops) != len(kinds) or kinds[n_sp:] != [tirx.IterVar.CommReduce] * (len(kinds) - n_sp):
                return None
            if n_sp:
                fused = sch.fuse(*loops[:n_sp]) if n_sp > 1 else loops[0]
                ext = _extent(sch, fused)
                if ext is None or ext >= 2:  # None: a symbolic row count
                    _try_parallel(sch, fused)
        elif loops:
            _schedule_injective_block(sch, b, _vec_lanes(target, _out_bits(sch, b)))
    return sch if has_red else None


CPU_RULES: list[tuple[str, Callable[[Any, Any], Any]]] = [
    ("cpu-gemm", cpu_gemm),
    ("dlight-cpu-reduction", _dlight_cpu_reduction),
    ("cpu-rowwise-reduction", cpu_rowwise_reduction),
    ("cpu-injective", cpu_injective),
    ("cpu-fallback", cpu_fallback),
]


def _gpu_rules() -> list[tuple[str, Callable[[Any, Any], Any]]]:
    from tvm.s_tir import dlight as dl

    out = []
    for r in (dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()):
        name = "dlight-gpu-" + type(r).__name__.lower()

        def fn(func: Any, target: Any, r: Any = r) -> Any:
            res = r.apply(func, target, False)
            return res[0] if isinstance(res, list) else res

        out.append((name, fn))
    return out


def _hint_for(name: str, hints: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    for k, v in hints.items():
        if k == name or k in name:
            return v
    return None


def schedule_function(name: str, func: Any, target: Any, hints: dict[str, dict[str, Any]] | None = None) -> tuple[str, Any]:
    """The default schedule for one PrimFunc: (rule name, s_tir.Schedule | None).

    Rule "none" (a hint asking to keep the kernel as written) and "unscheduled" (no rule
    applied) come with None.
    """
    from tvm import s_tir

    rules = _gpu_rules() if target.kind.name == "cuda" else CPU_RULES
    by_name = dict(rules)
    hint = _hint_for(name, hints or {})
    chosen = rules
    if hint is not None:
        if callable(hint.get("schedule")):
            sch = s_tir.Schedule(func)
            hint["schedule"](sch, target)
            return "hint", sch
        rule = hint.get("rule")
        if rule == "none":
            return "none", None
        if rule in by_name:
            opts = {k: v for k, v in hint.items() if k not in ("rule", "schedule")}
            base = by_name[rule]
            hinted = (lambda f, t, base=base, opts=opts: base(f, t, **opts)) if opts else base
            chosen = [(rule, hinted)] + [r for r in rules if r[0] != rule]
    with target:
        for rname, fn in chosen:
            try:
                sch = fn(func, target)
            except Exception:
                sch = None
            if sch is not None:
                return rname, sch
    return "unscheduled", None


def apply_default_schedules(mod: Any, target: Any, hints: dict[str, dict[str, Any]] | None = None) -> tuple[Any, dict[str, Any]]:
    """Schedule every unscheduled PrimFunc in `mod`; returns (mod, {"schedules": {rule: count}, "kernel_schedules": ...})."""
    from tvm import tirx

    counts: dict[str, int] = {}
    kernels: dict[str, str] = {}
    updates = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        if "tirx.is_scheduled" in func.attrs and int(func.attrs["tirx.is_scheduled"]) == 1:
            counts["tuned"] = counts.get("tuned", 0) + 1
            kernels[gv.name_hint] = "tuned"
            continue
        rname, sch = schedule_function(gv.name_hint, func, target, hints)
        if sch is not None:
            updates[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
        counts[rname] = counts.get(rname, 0) + 1
        kernels[gv.name_hint] = rname
    for gv, f in updates.items():
        mod[gv] = f
    return mod, {"schedules": dict(sorted(counts.items())), "kernel_schedules": kernels}

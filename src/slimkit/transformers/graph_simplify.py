"""Simplify an exported encoder graph before quantization: fewer, larger kernels at batch 1.

The TorchScript export of a BERT-family encoder computes, in every attention block, the shapes
of its four head-split/merge Reshapes from ``Shape -> Gather -> Unsqueeze -> Concat`` chains,
builds a (B, 1, T, T) boolean attention mask through ~40 index ops, and runs Q, K and V as
three MatMuls on the same input. At batch 1 (10-30 tokens) these small ops cost about as much
as the int8 matrix products. Passes, each exact (checked numerically at the end):

1. ``constant_reshapes``: a Reshape whose shape is computed gets a constant one, derived from
   ONNX Runtime's symbolic shape inference of that very graph: output dim k equal to input dim
   k (same symbol) becomes 0 (copy), a known size stays, at most one other dim becomes -1.
   (B, T, H*d) -> (B, T, H, d) is ``[0, 0, H, d]`` and the merge back ``[0, 0, H*d]``, with H
   and d those of each layer (pruned heads and FFN widths differ per layer).
2. ``padding_mask``: the additive mask ``Where(cond, 0, min)`` whose (B, 1, T, T) ``cond`` is
   the padding mask broadcast over query rows becomes ``Where(bool(mask[:, None, None, :]),
   0, min)`` of shape (B, 1, 1, T); ``cond`` is compared against that on probe inputs with
   padding before the rewrite, so a causal or otherwise different mask is left alone.
3. ``drop_shape_expands``: ``Expand(a, Shape(b))`` feeding only elementwise ops with ``b``
   becomes ``a`` (broadcasting gives the same values).
4. ``merge_sibling_matmuls``: MatMuls of one input with constant weights, each followed by a
   bias Add, become one MatMul on the concatenated weights, one Add and a Split (Q/K/V). ORT's
   per-channel int8 quantizes MatMul weights per output column, so the merged weight gets
   exactly the scales of the three separate ones.

Then unused nodes and initializers are removed and the simplified graph is compared with the
original on probe batches of several batch sizes and lengths (``ParityError`` past ``atol``).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from slimkit.errors import ParityError

ELEMENTWISE = ("Add", "Sub", "Mul", "Div")


@dataclasses.dataclass(frozen=True)
class SimplifyResult:
    nodes_before: int
    nodes_after: int
    reshapes_constant: int
    masks_simplified: int
    expands_dropped: int
    matmuls_merged: int  # merged groups (one per attention block for Q/K/V)
    max_abs_diff: float  # simplified vs original graph on the probe batches

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---- graph helpers -----------------------------------------------------------------------------


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node outputs (value attribute only) by name."""
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return out


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for n in model.graph.node:
        for i in n.input:
            if i:
                users[i].append(n)
    return users


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def _unique(model: onnx.ModelProto, base: str) -> str:
    taken = {o for n in model.graph.node for o in n.output} | {
        t.name for t in model.graph.initializer
    }
    taken |= {i.name for i in model.graph.input}
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name


def _symbolic_model(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """``model`` with value_info from ORT's symbolic shape inference, None if that fails."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    # auto_merge: the position-id Slice gives Min(max_positions, seq), merged with seq (inputs
    # are tokenized to at most max_positions); the final parity check covers such merges.
    try:
        return SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:  # inference gave up on some op: no shape-based rewrites then
        return None


def _symbolic_shapes(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    """Value name -> dims (int, symbol or None), {} when symbolic inference fails."""
    inferred = _symbolic_model(model)
    if inferred is None:
        return {}
    out: dict[str, list[int | str | None]] = {}
    for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        t = v.type.tensor_type
        if not t.HasField("shape"):
            continue
        out[v.name] = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim
        ]
    return out


def eliminate_dead_nodes(model: onnx.ModelProto) -> int:
    """Drop nodes whose outputs nothing uses, and unused initializers; returns nodes removed."""
    g = model.graph
    needed = {o.name for o in g.output}
    keep: list[onnx.NodeProto] = []
    for n in reversed(list(g.node)):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(i for i in n.input if i)
            for a in n.attribute:  # subgraphs (If/Loop) read outer names too
                if a.type == onnx.AttributeProto.GRAPH:
                    needed.update(i for sn in a.g.node for i in sn.input)
    removed = len(g.node) - len(keep)
    del g.node[:]
    g.node.extend(reversed(keep))
    inits = [t for t in g.initializer if t.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)
    vis = [v for v in g.value_info if v.name in needed]
    del g.value_info[:]
    g.value_info.extend(vis)
    return removed


# ---- pass 1: constant Reshape shapes ----------------------------------------------------------


def _reshape_target(
    src: Sequence[int | str | None], dst: Sequence[int | str | None]
) -> list[int] | None:
    """Constant Reshape shape turning ``src`` dims into ``dst`` dims, or None when unsure."""
    if not dst or any(d is None for d in dst) or any(d is None for d in src):
        return None
    if any(isinstance(d, int) and d <= 0 for d in dst):
        return None  # a 0-size dim would read as "copy" (allowzero=0)
    shape: list[int] = []
    free: list[int] = []
    for k, d in enumerate(dst):
        if isinstance(d, int):
            shape.append(d)
        elif k < len(src) and src[k] == d:
            shape.append(0)
        else:
            shape.append(-1)
            free.append(k)
    if len(free) > 1:
        return None
    # Sanity: the dims not copied must hold the same number of elements on both sides.
    copied = {k for k, v in enumerate(shape) if v == 0}
    rest_src = [d for k, d in enumerate(src) if k not in copied]
    rest_dst = [d for k, d in enumerate(dst) if k not in copied and k not in free]
    src_ints = [d for d in rest_src if isinstance(d, int)]
    if len(src_ints) == len(rest_src):
        total = math.prod(src_ints)
        known = math.prod(d for d in rest_dst if isinstance(d, int))
        if (free and total % known) or (not free and total != known):
            return None
    elif not free:
        return None  # symbolic leftovers with no -1 to absorb them
    return shape


def constant_reshapes(model: onnx.ModelProto, shapes: dict[str, list[int | str | None]]) -> int:
    """Give computed Reshape shapes a constant value (0 = copy dim, -1 = infer)."""
    consts = _constants(model)
    done = 0
    for n in model.graph.node:
        if n.op_type != "Reshape" or n.input[1] in consts:
            continue
        if any(a.name == "allowzero" and a.i for a in n.attribute):
            continue
        target = _reshape_target(shapes.get(n.input[0], []), shapes.get(n.output[0], []))
        if target is None:
            continue
        name = _unique(model, f"{n.name or n.output[0]}/shape")
        model.graph.initializer.append(numpy_helper.from_array(np.array(target, np.int64), name))
        n.input[1] = name
        done += 1
    return done


# ---- pass 2: padding mask ---------------------------------------------------------------------


def _probe_inputs(model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
    """(B, T) int64 feeds with padding (right, left and none) for every graph input."""
    rng = np.random.default_rng(0)
    feeds = []
    for b, t, lengths in ((1, 5, [5]), (3, 9, [9, 4, 1]), (2, 12, [7, 12])):
        mask = np.zeros((b, t), np.int64)
        for i, n in enumerate(lengths):
            mask[i, :n] = 1
        if b == 2:
            mask[0] = mask[0, ::-1]  # one left-padded row
        feed = {}
        for inp in model.graph.input:
            if "mask" in inp.name:
                feed[inp.name] = mask
            elif "type" in inp.name:
                feed[inp.name] = np.zeros((b, t), np.int64)
            else:
                feed[inp.name] = rng.integers(1000, 2000, (b, t), dtype=np.int64) * mask
        feeds.append(feed)
    return feeds


def _session(model: onnx.ModelProto, extra_outputs: Iterable[str] = ()):
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for name in extra_outputs:
        m.graph.output.append(helper.make_empty_tensor_value_info(name))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def padding_mask(model: onnx.ModelProto, shapes: dict[str, list[int | str | None]]) -> int:
    """(B, 1, T, T) additive padding masks built from ``attention_mask`` -> (B, 1, 1, T)."""
    masks = [i.name for i in model.graph.input if i.name == "attention_mask"]
    if not masks:
        return 0
    mask_in = masks[0]
    b_sym, t_sym = shapes.get(mask_in, [None, None])[:2]
    consts = _constants(model)
    users = _consumers(model)
    candidates = []
    for n in model.graph.node:
        if n.op_type != "Where" or n.input[1] not in consts or n.input[2] not in consts:
            continue
        if consts[n.input[1]].size != 1 or consts[n.input[2]].size != 1:
            continue
        if shapes.get(n.input[0]) != [b_sym, 1, t_sym, t_sym]:
            continue
        # Every use must broadcast the mask against full (B, H, T, T) scores.
        ok = all(
            u.op_type in ELEMENTWISE
            and all(
                (s := shapes.get(i)) is not None
                and len(s) == 4
                and s[0] == b_sym
                and s[2] == t_sym
                and s[3] == t_sym
                for i in u.input
                if i != n.output[0]
            )
            for u in users[n.output[0]]
        )
        if ok and users[n.output[0]]:
            candidates.append(n)
    if not candidates:
        return 0
    sess = _session(model, [n.input[0] for n in candidates])
    names = [o.name for o in sess.get_outputs()][len(model.graph.output) :]
    for feed in _probe_inputs(model):
        got = dict(zip(names, sess.run(names, feed)))
        want = feed[mask_in][:, None, None, :].astype(bool)
        b, t = want.shape[0], want.shape[-1]
        candidates = [
            n
            for n in candidates
            if got[n.input[0]].shape == (b, 1, t, t)
            and np.array_equal(got[n.input[0]], np.broadcast_to(want, (b, 1, t, t)))
        ]
    done = 0
    for n in candidates:
        unsq = _unique(model, "/slimkit/padding_mask/axes")
        model.graph.initializer.append(numpy_helper.from_array(np.array([1, 2], np.int64), unsq))
        u_out = _unique(model, "/slimkit/padding_mask/Unsqueeze_output_0")
        c_out = _unique(model, "/slimkit/padding_mask/Cast_output_0")
        idx = list(model.graph.node).index(n)
        model.graph.node.insert(
            idx,
            helper.make_node(
                "Unsqueeze", [mask_in, unsq], [u_out], name="/slimkit/padding_mask/Unsqueeze"
            ),
        )
        model.graph.node.insert(
            idx + 1,
            helper.make_node(
                "Cast",
                [u_out],
                [c_out],
                name="/slimkit/padding_mask/Cast",
                to=onnx.TensorProto.BOOL,
            ),
        )
        n.input[0] = c_out
        done += 1
    return done


# ---- pass 3: Expand to another tensor's shape before a broadcasting op ------------------------


def drop_shape_expands(model: onnx.ModelProto) -> int:
    prod = _producers(model)
    users = _consumers(model)
    outputs = {o.name for o in model.graph.output}
    done = 0
    for n in list(model.graph.node):
        if n.op_type != "Expand" or n.output[0] in outputs:
            continue
        shp = prod.get(n.input[1])
        if shp is None or shp.op_type != "Shape" or len(shp.attribute) > 0:
            continue
        ref = shp.input[0]
        uses = users[n.output[0]]
        if not uses or not all(
            u.op_type in ELEMENTWISE and len(u.input) == 2 and ref in u.input for u in uses
        ):
            continue
        for u in uses:
            for k, i in enumerate(u.input):
                if i == n.output[0]:
                    u.input[k] = n.input[0]
        done += 1
    return done


# ---- pass 4: sibling MatMul + bias Add -> one MatMul + Add + Split ----------------------------


def _merged_name(names: Sequence[str]) -> str:
    """'/a/self/query/MatMul', '/a/self/key/MatMul' -> '/a/self/query_key/MatMul'."""
    parts = [n.split("/") for n in names]
    if len({len(p) for p in parts}) == 1:
        cols = list(zip(*parts))
        diff = [k for k, c in enumerate(cols) if len(set(c)) > 1]
        if len(diff) == 1:
            k = diff[0]
            return "/".join([*parts[0][:k], "_".join(p[k] for p in parts), *parts[0][k + 1 :]])
    return "+".join(names)


def merge_sibling_matmuls(model: onnx.ModelProto) -> int:
    g = model.graph
    nodes = list(g.node)
    inits = {t.name: t for t in g.initializer}
    users: dict[str, list[int]] = collections.defaultdict(list)
    for k, n in enumerate(nodes):
        for i in n.input:
            if i:
                users[i].append(k)
    outputs = {o.name for o in g.output}
    # MatMul input -> [(MatMul index, Add index, bias name)]
    groups: dict[str, list[tuple[int, int, str]]] = collections.defaultdict(list)
    for k, n in enumerate(nodes):
        if n.op_type != "MatMul" or n.input[1] not in inits or len(users[n.input[1]]) != 1:
            continue
        w = inits[n.input[1]]
        if len(w.dims) != 2 or w.data_type != onnx.TensorProto.FLOAT:
            continue
        uses = users[n.output[0]]
        if len(uses) != 1 or nodes[uses[0]].op_type != "Add" or n.output[0] in outputs:
            continue
        add = nodes[uses[0]]
        bias = add.input[0] if add.input[1] == n.output[0] else add.input[1]
        if bias not in inits or len(users[bias]) != 1 or list(inits[bias].dims) != [w.dims[1]]:
            continue
        groups[n.input[0]].append((k, uses[0], bias))
    replace: dict[int, list[onnx.NodeProto]] = {}  # first old node index -> new nodes
    drop: set[int] = set()
    for x, members in groups.items():
        if len(members) < 2:
            continue
        mms, adds = [nodes[m] for m, _, _ in members], [nodes[a] for _, a, _ in members]
        ws = [numpy_helper.to_array(inits[m.input[1]]) for m in mms]
        bs = [numpy_helper.to_array(inits[b]) for _, _, b in members]
        base = _merged_name([m.name or m.output[0] for m in mms])
        prefix = base.rsplit("/", 1)[0] if "/" in base else base
        w_name, b_name = _unique(model, f"{prefix}.weight"), _unique(model, f"{prefix}.bias")
        s_name = _unique(model, f"{prefix}/split")
        g.initializer.extend(
            [
                numpy_helper.from_array(np.concatenate(ws, axis=1), w_name),  # (K, sum N)
                numpy_helper.from_array(np.concatenate(bs), b_name),
                numpy_helper.from_array(np.array([w.shape[1] for w in ws], np.int64), s_name),
            ]
        )
        mm_out = _unique(model, f"{prefix}/MatMul_output_0")
        add_out = _unique(model, f"{prefix}/Add_output_0")
        idx = [m for m, _, _ in members] + [a for _, a, _ in members]
        drop.update(idx)
        replace[min(idx)] = [
            helper.make_node("MatMul", [x, w_name], [mm_out], name=base),
            helper.make_node("Add", [mm_out, b_name], [add_out], name=f"{prefix}/Add"),
            helper.make_node(
                "Split",
                [add_out, s_name],
                [a.output[0] for a in adds],
                name=f"{prefix}/Split",
                axis=-1,
            ),
        ]
    if not replace:
        return 0
    kept: list[onnx.NodeProto] = []
    for k, n in enumerate(nodes):
        kept.extend(replace.get(k, []))
        if k not in drop:
            kept.append(n)
    del g.node[:]
    g.node.extend(kept)
    return len(replace)


# ---- the pass ----------------------------------------------------------------------------------


def max_abs_diff(
    a: onnx.ModelProto, b: onnx.ModelProto, feeds: list[dict[str, np.ndarray]] | None = None
) -> float:
    """Max |a - b| of the first output over ``feeds`` (default: padded probe batches)."""
    sa, sb = _session(a), _session(b)
    worst = 0.0
    for feed in feeds or _probe_inputs(a):
        ra, rb = sa.run(None, feed)[0], sb.run(None, feed)[0]
        if ra.shape != rb.shape:
            return float("inf")
        worst = max(worst, float(np.abs(ra - rb).max()))
    return worst


def simplify_model(
    model: onnx.ModelProto,
    *,
    merge_matmuls: bool = True,
    atol: float = 1e-5,
    feeds: list[dict[str, np.ndarray]] | None = None,
) -> tuple[onnx.ModelProto, SimplifyResult]:
    """Simplified copy of ``model`` (left untouched); ParityError when it disagrees > ``atol``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    before = len(out.graph.node)
    shapes = _symbolic_shapes(out)
    n_reshape = constant_reshapes(out, shapes)
    n_mask = padding_mask(out, shapes)
    n_expand = drop_shape_expands(out)
    n_merge = merge_sibling_matmuls(out) if merge_matmuls else 0
    eliminate_dead_nodes(out)
    del out.graph.value_info[:]
    # Keep the symbolic shapes as value_info: ORT's own inference names the batch dim of the
    # attention branch differently from the residual's, and then does not fuse the attention
    # output's Add + LayerNorm into SkipLayerNormalization (6 of 12 fused without, 12 with).
    inferred = _symbolic_model(out)
    if inferred is not None:
        out.graph.value_info.extend(inferred.graph.value_info)
    onnx.checker.check_model(out)
    diff = max_abs_diff(model, out, feeds)
    if not diff <= atol:
        raise ParityError(
            f"graph simplification changed the encoder's output: max |diff| = {diff:.3g} > "
            f"tolerance {atol:g}; use simplify=False to keep the exported graph as is"
        )
    res = SimplifyResult(before, len(out.graph.node), n_reshape, n_mask, n_expand, n_merge, diff)
    return out, res


def simplify_bytes(data: bytes, **kwargs) -> tuple[bytes, SimplifyResult]:
    model, res = simplify_model(onnx.load_from_string(data), **kwargs)
    return model.SerializeToString(), res

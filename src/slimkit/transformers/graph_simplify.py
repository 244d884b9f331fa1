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
   0, min)`` of shape (B, 1, 1, T), expanded once to (B, 1, T, T) (~40 index ops -> 8); ``cond``
   is compared against that on probe inputs with padding before the rewrite, so a causal or
   otherwise different mask is left alone.
3. ``drop_shape_expands``: ``Expand(a, Shape(b))`` feeding only elementwise ops with ``b``
   becomes ``a`` (broadcasting gives the same values).
4. ``merge_sibling_matmuls``: MatMuls of one input with constant weights, each followed by a
   bias Add, become one MatMul on the concatenated weights, one Add and a Split (Q/K/V). ORT's
   per-channel int8 quantizes MatMul weights per output column, so the merged weight gets
   exactly the scales of the three separate ones (int8 embeddings measured bit-identical).
   Measured on MiniLM int8: ~3 % faster at batch 1, ~1 % slower at batch 32 (the Split copies
   the (B, T, 3*H*d) product), so on by default where batch 1 is the tight target.

For the packed (padding-free) export (packed.py), whose 2-D token stream torch exports with
Gemm: ``gemms_to_matmuls`` (Gemm -> MatMul + Add, before 4, so Q/K/V merge and int8 exclusions
find MatMuls by name) and ``drop_split_concats`` (4b: the merged Q/K/V product that the packed
attention concatenates again is used as is).

Also (3b) ``constant_gathers``: the token-type lookup of HF's buffered all-zero ids becomes its
constant row; opt-in: ``merge_head_splits`` (one head Reshape for Q/K/V) and ``fuse_attention``
(ORT ``MultiHeadAttention``), see :func:`simplify_model` for why they are off by default.

Then unused nodes and initializers are removed and the simplified graph is compared with the
original on probe batches of several batch sizes and lengths (``ParityError`` past ``atol``).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import tempfile
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
    gathers_constant: int  # embedding lookups of a constant index (token types)
    matmuls_merged: int  # merged groups (one per attention block for Q/K/V)
    split_concats_dropped: int  # Concat(Split(x)) -> x (the packed encoder's Q/K/V)
    head_splits_merged: int  # Q/K/V head reshapes done once on the merged tensor (opt-in)
    attentions_fused: int  # MultiHeadAttention nodes (opt-in)
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


def _consumer_indices(nodes: Sequence[onnx.NodeProto]) -> dict[str, list[int]]:
    """Like :func:`_consumers`, but value name -> positions in ``nodes`` (for passes that splice)."""
    users: dict[str, list[int]] = collections.defaultdict(list)
    for k, n in enumerate(nodes):
        for i in n.input:
            if i:
                users[i].append(k)
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
    # When it gives up, ORT saves a debug model (90 MB of external data for MiniLM) into the
    # current directory: run it from a scratch one.
    with tempfile.TemporaryDirectory(prefix="slimkit-shapes-") as tmp, contextlib.chdir(tmp):
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
    names = {i.name for i in model.graph.input}
    tables = {t.name: int(t.dims[0]) for t in model.graph.initializer if len(t.dims) == 2}
    rows = [  # rows of the embedding tables looked up by a graph input: keep ids below
        tables[n.input[0]]
        for n in model.graph.node
        if n.op_type == "Gather" and n.input[1] in names and n.input[0] in tables
    ]
    high = min([*rows, 2000])
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
                feed[inp.name] = rng.integers(high // 2, high, (b, t), dtype=np.int64) * mask
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
        pre = "/slimkit/padding_mask/"
        axes, one = _unique(model, pre + "axes"), _unique(model, pre + "one")
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(np.array([1, 2], np.int64), axes),
                numpy_helper.from_array(np.array([1], np.int64), one),
            ]
        )
        u_out, c_out = _unique(model, pre + "Unsqueeze_output_0"), _unique(model, pre + "Cast")
        w_out, b_dim = _unique(model, pre + "Where_output_0"), _unique(model, pre + "batch")
        t_dim, shape = _unique(model, pre + "seq"), _unique(model, pre + "shape")
        idx = list(model.graph.node).index(n)
        before = [
            helper.make_node("Unsqueeze", [mask_in, axes], [u_out], name=pre + "Unsqueeze"),
            helper.make_node("Cast", [u_out], [c_out], name=pre + "Cast", to=onnx.TensorProto.BOOL),
        ]
        # (B, 1, 1, T) -> (B, 1, T, T) once: ORT adds a (B, 1, T, T) mask to the (B, H, T, T)
        # scores faster than a (B, 1, 1, T) one (measured: all mask Adds 1.7 vs 0.9 ms at b32).
        after = [
            helper.make_node("Shape", [mask_in], [b_dim], name=pre + "Shape", start=0, end=1),
            helper.make_node("Shape", [mask_in], [t_dim], name=pre + "Shape_1", start=1, end=2),
            helper.make_node(
                "Concat", [b_dim, one, t_dim, t_dim], [shape], name=pre + "Concat", axis=0
            ),
            helper.make_node("Expand", [w_out, shape], [n.output[0]], name=pre + "Expand"),
        ]
        n.input[0] = c_out
        n.output[0] = w_out
        nodes = list(model.graph.node)
        nodes[idx : idx + 1] = [*before, nodes[idx], *after]
        del model.graph.node[:]
        model.graph.node.extend(nodes)
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


# ---- pass 3b: embedding lookups whose indices are a constant (token_type_ids) -----------------


def _shape_only(model: onnx.ModelProto, name: str) -> bool:
    """True when ``name`` reads the graph inputs only through Shape nodes (not their values)."""
    prod = _producers(model)
    inputs = {i.name for i in model.graph.input}
    seen: set[str] = set()
    stack = [name]
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        if t in inputs:
            return False
        n = prod.get(t)
        if n is None or n.op_type == "Shape":
            continue
        if any(a.type == onnx.AttributeProto.GRAPH for a in n.attribute):
            return False
        stack.extend(i for i in n.input if i)
    return True


def constant_gathers(model: onnx.ModelProto, shapes: dict[str, list[int | str | None]]) -> int:
    """``Gather(table, idx)`` added to a full-shape tensor, where ``idx`` depends only on input
    shapes and is one value ``v`` everywhere (HF's buffered all-zero ``token_type_ids``), becomes
    the constant row ``table[v]``: broadcasting adds exactly the same values."""
    inits = {t.name: t for t in model.graph.initializer}
    users = _consumers(model)
    cands = []
    for n in model.graph.node:
        if n.op_type != "Gather" or n.input[0] not in inits or _attr(n, "axis", 0) != 0:
            continue
        if n.input[1] in inits or len(inits[n.input[0]].dims) != 2:
            continue
        out_shape = shapes.get(n.output[0])
        uses = users[n.output[0]]
        if (
            not out_shape
            or not uses
            or not all(
                u.op_type == "Add"
                and shapes.get(next(i for i in u.input if i != n.output[0])) == out_shape
                for u in uses
            )
        ):
            continue
        if _shape_only(model, n.input[1]):
            cands.append(n)
    if not cands:
        return 0
    sess = _session(model, [n.input[1] for n in cands])
    names = [o.name for o in sess.get_outputs()][len(model.graph.output) :]
    values: dict[str, set[int]] = collections.defaultdict(set)
    for feed in _probe_inputs(model):
        for name, v in zip(names, sess.run(names, feed)):
            values[name].update(np.unique(v).tolist())
    done = 0
    for n in cands:
        vals = values[n.input[1]]
        if len(vals) != 1:
            continue
        row = numpy_helper.to_array(inits[n.input[0]])[int(vals.pop())]  # (D,)
        name = _unique(model, f"{n.input[0]}.row")
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(row), name))
        for u in users[n.output[0]]:
            for k, i in enumerate(u.input):
                if i == n.output[0]:
                    u.input[k] = name
        done += 1
    return done


# ---- pass 4: sibling MatMul + bias Add -> one MatMul + Add + Split ----------------------------


def _splice(
    g: onnx.GraphProto,
    nodes: Sequence[onnx.NodeProto],
    replace: dict[int, list[onnx.NodeProto]],
    drop: set[int],
) -> int:
    """Rewrite ``g``'s nodes: the new nodes ``replace[k]`` go before old node ``k`` (keeping
    topological order), old nodes in ``drop`` go; returns how many replacements were made."""
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


def gemms_to_matmuls(model: onnx.ModelProto) -> int:
    """``Gemm(x, W, b)`` (constant W, transA 0, alpha = beta = 1, 1-D or no b) -> ``MatMul(x,
    W')`` [+ ``Add(b)``]: torch exports a Linear on a 2-D input (the packed encoder's (N, D)
    stream, packed.py) as Gemm. As MatMul + Add it merges like the 3-D case (Q/K/V), ORT still
    fuses it into one DynamicQuantizeMatMul, and int8 exclusions find it by the MatMul name."""
    g = model.graph
    nodes = list(g.node)
    inits = {t.name: t for t in g.initializer}
    replace: dict[int, list[onnx.NodeProto]] = {}
    for k, n in enumerate(nodes):
        if n.op_type != "Gemm" or n.input[1] not in inits:
            continue
        if _attr(n, "transA", 0) or _attr(n, "alpha", 1.0) != 1.0 or _attr(n, "beta", 1.0) != 1.0:
            continue
        bias = n.input[2] if len(n.input) > 2 and n.input[2] else None
        if bias is not None and (bias not in inits or len(inits[bias].dims) != 1):
            continue
        w = numpy_helper.to_array(inits[n.input[1]])
        w = w.T if _attr(n, "transB", 0) else w  # (in, out)
        base = n.name.rsplit("/", 1)[0] if "/" in n.name else _unique(model, "gemm")
        w_name = _unique(model, f"{base}.weight_t")
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), w_name))
        if bias is None:
            replace[k] = [
                helper.make_node(
                    "MatMul", [n.input[0], w_name], [n.output[0]], name=f"{base}/MatMul"
                )
            ]
            continue
        mm_out = _unique(model, f"{n.output[0]}/matmul")
        replace[k] = [
            helper.make_node("MatMul", [n.input[0], w_name], [mm_out], name=f"{base}/MatMul"),
            helper.make_node("Add", [mm_out, bias], [n.output[0]], name=f"{base}/Add"),
        ]
    return _splice(g, nodes, replace, set(replace))


def merge_sibling_matmuls(model: onnx.ModelProto) -> int:
    g = model.graph
    nodes = list(g.node)
    inits = {t.name: t for t in g.initializer}
    users = _consumer_indices(nodes)
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
    return _splice(g, nodes, replace, drop)


# ---- pass 4b: Concat of every output of one Split, in order, on its axis = the Split's input ---


def drop_split_concats(model: onnx.ModelProto, shapes: dict[str, list[int | str | None]]) -> int:
    """``Concat(Split(x))`` -> ``x``: after ``merge_sibling_matmuls``, the packed encoder's
    ``cat([query(h), key(h), value(h)])`` (packed.py) is the merged product split and rejoined."""
    prod = _producers(model)
    users = _consumers(model)
    outputs = {o.name for o in model.graph.output}
    done = 0
    for n in list(model.graph.node):
        if n.op_type != "Concat" or not n.input or n.output[0] in outputs:
            continue
        split = prod.get(n.input[0])
        if split is None or split.op_type != "Split" or list(split.output) != list(n.input):
            continue
        if any(len(users[o]) != 1 or o in outputs for o in split.output):
            continue
        rank = len(shapes.get(n.output[0]) or [])  # the Split's input has the Concat's rank
        a_split, a_cat = _attr(split, "axis", 0), _attr(n, "axis", 0)
        if a_split != a_cat and not (rank and a_split % rank == a_cat % rank):
            continue
        for u in users[n.output[0]]:
            for k, i in enumerate(u.input):
                if i == n.output[0]:
                    u.input[k] = split.input[0]
        done += 1
    return done


# ---- pass 5: split -> per-head Reshape -> Transpose, done once on the merged tensor -------------


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def merge_head_splits(model: onnx.ModelProto) -> int:
    """Split(last axis) -> k x (Reshape [0, 0, h, d] -> Transpose) becomes one Reshape
    [0, 0, k*h, d] -> Transpose (0, 2, 1, 3) -> Split(axis 1): (B, T, k*h*d) -> k x (B, h, T, d).

    A member transposed with (0, 2, 3, 1) (K, for Q @ K^T) gets a Transpose (0, 1, 3, 2) of its
    (B, h, T, d) part, which ORT folds into the next MatMul (transB).
    """
    g = model.graph
    nodes = list(g.node)
    consts = _constants(model)
    users = _consumer_indices(nodes)
    outputs = {o.name for o in g.output}
    replace: dict[int, list[onnx.NodeProto]] = {}
    drop: set[int] = set()
    for k, n in enumerate(nodes):
        if n.op_type != "Split" or len(n.input) < 2 or n.input[1] not in consts:
            continue
        sizes = consts[n.input[1]].tolist()
        if len(set(sizes)) != 1 or _attr(n, "axis", 0) not in (-1, 2):
            continue
        chain = []  # (Reshape index, Transpose index, perm)
        for o in n.output:
            r = users[o]
            if o in outputs or len(r) != 1 or nodes[r[0]].op_type != "Reshape":
                break
            rs = nodes[r[0]]
            t = users[rs.output[0]]
            if rs.output[0] in outputs or len(t) != 1 or nodes[t[0]].op_type != "Transpose":
                break
            perm = tuple(_attr(nodes[t[0]], "perm", ()))
            if perm not in ((0, 2, 1, 3), (0, 2, 3, 1)) or rs.input[1] not in consts:
                break
            chain.append((r[0], t[0], perm))
        if len(chain) != len(n.output):
            continue
        shapes = {tuple(consts[nodes[r].input[1]].tolist()) for r, _, _ in chain}
        if len(shapes) != 1:
            continue
        shape = shapes.pop()
        if len(shape) != 4 or shape[:2] != (0, 0) or min(shape[2:]) <= 0:
            continue
        h, d = shape[2], shape[3]
        if h * d != sizes[0]:
            continue
        base = n.name.rsplit("/", 1)[0] if "/" in n.name else n.name
        shape_name = _unique(model, f"{base}/heads_shape")
        split_name = _unique(model, f"{base}/heads_split")
        g.initializer.extend(
            [
                numpy_helper.from_array(np.array([0, 0, len(chain) * h, d], np.int64), shape_name),
                numpy_helper.from_array(np.array([h] * len(chain), np.int64), split_name),
            ]
        )
        r_out = _unique(model, f"{base}/heads_Reshape_output_0")
        t_out = _unique(model, f"{base}/heads_Transpose_output_0")
        outs, extra = [], []
        for j, (_, tr, perm) in enumerate(chain):
            final = nodes[tr].output[0]
            if perm == (0, 2, 1, 3):
                outs.append(final)
            else:
                tmp = _unique(model, f"{base}/heads_Split_output_{j}")
                outs.append(tmp)
                extra.append(
                    helper.make_node(
                        "Transpose",
                        [tmp],
                        [final],
                        name=f"{base}/heads_Transpose_{j}",
                        perm=[0, 1, 3, 2],
                    )
                )
        replace[k] = [
            helper.make_node(
                "Reshape", [n.input[0], shape_name], [r_out], name=f"{base}/heads_Reshape"
            ),
            helper.make_node(
                "Transpose", [r_out], [t_out], name=f"{base}/heads_Transpose", perm=[0, 2, 1, 3]
            ),
            helper.make_node(
                "Split", [t_out, split_name], outs, name=f"{base}/heads_Split", axis=1
            ),
            *extra,
        ]
        drop.add(k)
        drop.update(i for r, t, _ in chain for i in (r, t))
    return _splice(g, nodes, replace, drop)


# ---- pass 6: attention core -> com.microsoft MultiHeadAttention -------------------------------


def fuse_attention(model: onnx.ModelProto) -> int:
    """HF eager attention on (B, T, h*d) q, k, v with the (B, 1, 1, T) padding mask of
    ``padding_mask`` -> one ``MultiHeadAttention`` (ORT contrib op, fp32, 2-D key padding mask).

    Matched per Softmax: ``Reshape [0, 0, h, d]`` + Transpose of q (0, 2, 1, 3), k (0, 2, 3, 1)
    and v (0, 2, 1, 3); ``MatMul(q, k) * c + mask``; Softmax; ``MatMul(p, v)``; Transpose
    (0, 2, 1, 3); ``Reshape [0, 0, h*d]``. The Q/K/V projections stay outside (int8 MatMuls).
    """
    g = model.graph
    nodes = list(g.node)
    prod = {o: k for k, n in enumerate(nodes) for o in n.output}
    users = _consumer_indices(nodes)
    consts = _constants(model)
    outputs = {o.name for o in g.output}

    def single(name: str, op: str) -> int | None:
        """Index of the only consumer of ``name`` when it is an ``op``."""
        u = users.get(name, [])
        if name in outputs or len(u) != 1 or nodes[u[0]].op_type != op:
            return None
        return u[0]

    def by(name: str, op: str) -> int | None:
        k = prod.get(name)
        return k if k is not None and nodes[k].op_type == op else None

    def head_input(name: str, perm: tuple[int, ...]) -> tuple[str, list[int], tuple] | None:
        """Transpose(perm)(Reshape(x, [0, 0, h, d])) -> (x, node indices, (h, d))."""
        t = by(name, "Transpose")
        if t is None or tuple(_attr(nodes[t], "perm", ())) != perm:
            return None
        r = by(nodes[t].input[0], "Reshape")
        if r is None or single(nodes[r].output[0], "Transpose") != t:
            return None
        shape = consts.get(nodes[r].input[1])
        if shape is None or shape.tolist()[:2] != [0, 0] or len(shape) != 4:
            return None
        return nodes[r].input[0], [r, t], tuple(shape.tolist()[2:])

    mask_in = next((i.name for i in g.input if i.name == "attention_mask"), None)
    if mask_in is None:
        return 0
    replace: dict[int, list[onnx.NodeProto]] = {}
    drop: set[int] = set()
    kpm = ""
    for k, sm in enumerate(nodes):
        if sm.op_type != "Softmax" or _attr(sm, "axis", -1) not in (-1, 3):
            continue
        add = by(sm.input[0], "Add")
        if add is None or single(nodes[add].output[0], "Softmax") != k:
            continue
        a_in = list(nodes[add].input)
        mul = next((by(i, "Mul") for i in a_in if by(i, "Mul") is not None), None)
        if mul is None or single(nodes[mul].output[0], "Add") != add:
            continue
        mask = a_in[1] if a_in[0] == nodes[mul].output[0] else a_in[0]
        e = by(mask, "Expand")  # padding_mask's (B, 1, 1, T) -> (B, 1, T, T)
        w = by(nodes[e].input[0] if e is not None else mask, "Where")
        if w is None or nodes[w].input[1] not in consts or nodes[w].input[2] not in consts:
            continue
        c = by(nodes[w].input[0], "Cast")
        u = by(nodes[c].input[0], "Unsqueeze") if c is not None else None
        if u is None or nodes[u].input[0] != mask_in:
            continue
        if consts.get(nodes[u].input[1], np.zeros(0)).tolist() != [1, 2]:
            continue
        if float(consts[nodes[w].input[1]]) != 0.0:
            continue
        filt = float(consts[nodes[w].input[2]])
        m_in = list(nodes[mul].input)
        qk = next((by(i, "MatMul") for i in m_in if by(i, "MatMul") is not None), None)
        scale_name = m_in[1] if qk is not None and m_in[0] == nodes[qk].output[0] else m_in[0]
        if qk is None or scale_name not in consts or consts[scale_name].size != 1:
            continue
        if single(nodes[qk].output[0], "Mul") != mul:
            continue
        q = head_input(nodes[qk].input[0], (0, 2, 1, 3))
        kk = head_input(nodes[qk].input[1], (0, 2, 3, 1))
        pv = single(sm.output[0], "MatMul")
        if q is None or kk is None or pv is None or nodes[pv].input[0] != sm.output[0]:
            continue
        v = head_input(nodes[pv].input[1], (0, 2, 1, 3))
        t3 = single(nodes[pv].output[0], "Transpose")
        if v is None or t3 is None or tuple(_attr(nodes[t3], "perm", ())) != (0, 2, 1, 3):
            continue
        r3 = single(nodes[t3].output[0], "Reshape")
        if r3 is None or q[2] != kk[2] or q[2] != v[2]:
            continue
        h, d = q[2]
        if consts.get(nodes[r3].input[1], np.zeros(0)).tolist() != [0, 0, h * d]:
            continue
        if not kpm:
            kpm = _unique(model, "/slimkit/key_padding_mask")
            replace.setdefault(0, []).append(
                helper.make_node(
                    "Cast", [mask_in], [kpm], name=kpm, to=onnx.TensorProto.INT32
                )  # (B, T) int32, 1 = attend
            )
        name = nodes[qk].name.rsplit("/", 1)[0] + "/MultiHeadAttention"
        replace.setdefault(r3, []).append(
            helper.make_node(
                "MultiHeadAttention",
                [q[0], kk[0], v[0], "", kpm],
                [nodes[r3].output[0]],
                name=name,
                domain="com.microsoft",
                num_heads=int(h),
                scale=float(consts[scale_name]),
                mask_filter_value=filt,
            )
        )
        drop.update([*q[1], *kk[1], *v[1], qk, mul, add, k, pv, t3, r3])
    if not _splice(g, nodes, replace, drop):
        return 0
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return sum(n.op_type == "MultiHeadAttention" for n in g.node)


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
    merge_heads: bool = False,
    attention: bool = False,
    atol: float = 1e-5,
    feeds: list[dict[str, np.ndarray]] | None = None,
) -> tuple[onnx.ModelProto, SimplifyResult]:
    """Simplified copy of ``model`` (left untouched); ParityError when it disagrees > ``atol``.

    ``merge_heads`` (:func:`merge_head_splits`) and ``attention`` (:func:`fuse_attention`) are
    off by default: after ORT dynamic int8 on MiniLM at 2 threads both were faster at batch 1
    but 13-15 % slower at batch 32 than the default passes (benchmarks/minilm_graph.py) on the
    padded graph. The packed export (packed.py) turns ``merge_heads`` on: there it is ~9 %
    faster at batch 1 and even at batch 32.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    before = len(out.graph.node)
    shapes = _symbolic_shapes(out)
    n_reshape = constant_reshapes(out, shapes)
    n_mask = padding_mask(out, shapes)
    n_expand = drop_shape_expands(out)
    n_gather = constant_gathers(out, shapes)
    gemms_to_matmuls(out)
    n_merge = merge_sibling_matmuls(out) if merge_matmuls else 0
    n_split_cat = drop_split_concats(out, shapes) if n_merge else 0
    n_attn = fuse_attention(out) if attention else 0
    eliminate_dead_nodes(out)  # Shape reads the reshapes above made dead would block merging
    n_heads = merge_head_splits(out) if merge_heads else 0
    eliminate_dead_nodes(out)
    # No value_info: with the symbolic shapes kept, ORT also fuses each attention output's
    # Add + LayerNorm into SkipLayerNormalization (12 instead of 6), but the int8 MiniLM then
    # measured ~12 % slower at batch 32 (67 vs 60 ms interleaved) and no faster at batch 1.
    del out.graph.value_info[:]
    # ONNX shape inference knows no com.microsoft op: without its output type every tensor after
    # one of packed.py's fused nodes is untyped, and ORT's static quantizer then silently leaves
    # those activations fp32 (weight-only int8).
    out.graph.value_info.extend(
        helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None)
        for n in out.graph.node
        if n.domain == "com.microsoft" and n.op_type in ("Attention", "MultiHeadAttention")
        for o in n.output[:1]
    )
    onnx.checker.check_model(out)
    diff = max_abs_diff(model, out, feeds)
    if not diff <= atol:
        raise ParityError(
            f"graph simplification changed the encoder's output: max |diff| = {diff:.3g} > "
            f"tolerance {atol:g}; use simplify=False to keep the exported graph as is"
        )
    res = SimplifyResult(
        before,
        len(out.graph.node),
        n_reshape,
        n_mask,
        n_expand,
        n_gather,
        n_merge,
        n_split_cat,
        n_heads,
        n_attn,
        diff,
    )
    return out, res


def simplify_bytes(data: bytes, **kwargs) -> tuple[bytes, SimplifyResult]:
    model, res = simplify_model(onnx.load_from_string(data), **kwargs)
    return model.SerializeToString(), res

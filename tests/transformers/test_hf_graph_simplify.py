import collections
import copy

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from slimkit.transformers import tokenize
from slimkit.transformers.graph_simplify import simplify_model
from slimkit.transformers.int8 import onnx_nodes_for_units
from slimkit.transformers.onnx_export import PARITY_SENTENCES, export_bytes
from slimkit.transformers.structural import prune_ffn_, prune_heads_

ort = pytest.importorskip("onnxruntime")


def _export(module, tokenizer) -> onnx.ModelProto:
    example = tokenize(tokenizer, list(PARITY_SENTENCES[:2]), 64)
    return onnx.load_from_string(export_bytes(module, example))


def _feeds(tokenizer, sentences):
    """Batches of different size and padded length: (1, T1), (3, T2), (8, T3)."""
    batches = [sentences[5:6], sentences[:3], sentences]
    return [{k: v.numpy() for k, v in tokenize(tokenizer, b, 64).items()} for b in batches]


def _run(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [sess.run(None, f)[0] for f in feeds]


def _check_parity(model, simple, tokenizer, sentences, torch_module):
    feeds = _feeds(tokenizer, sentences)
    assert len({f["input_ids"].shape for f in feeds}) == 3  # both axes vary
    for a, b, f in zip(_run(model, feeds), _run(simple, feeds), feeds):
        assert a.shape == b.shape == (f["input_ids"].shape[0], 384)
        assert np.abs(a - b).max() <= 1e-5
    # and still the PyTorch module's embeddings
    import torch

    ids, mask = (torch.from_numpy(feeds[1][k]) for k in ("input_ids", "attention_mask"))
    ref = torch_module(ids, mask).detach().numpy()
    assert np.abs(_run(simple, feeds[1:2])[0] - ref).max() < 1e-4


def _reshape_shapes(model: onnx.ModelProto, layer: int) -> list[list[int]]:
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return [
        inits[n.input[1]].tolist()
        for n in model.graph.node
        if n.op_type == "Reshape" and f"/layer.{layer}/attention/self/" in n.name
    ]


def test_simplify_minilm_parity_and_fewer_ops(encoder, sentence_module, sentences):
    model = _export(sentence_module, encoder.tokenizer)
    simple, res = simplify_model(model)
    ops = collections.Counter(n.op_type for n in simple.graph.node)
    before = collections.Counter(n.op_type for n in model.graph.node)
    assert res.nodes_before == len(model.graph.node) and res.nodes_after == len(simple.graph.node)
    assert res.nodes_after < 0.5 * res.nodes_before  # 567 -> 244 measured
    assert res.reshapes_constant == 24 and res.masks_simplified == 1 and res.matmuls_merged == 6
    assert res.gathers_constant == 1 and res.expands_dropped == 1  # token types, pooling
    assert res.max_abs_diff <= 1e-5
    assert ops["MatMul"] == before["MatMul"] - 12 and ops["Split"] == 6  # Q/K/V -> 1 per layer
    assert ops["Shape"] <= 5 and ops["Concat"] <= 2 and ops["Unsqueeze"] <= 6
    # every attention Reshape has a constant shape with 12 heads of 32
    assert _reshape_shapes(simple, 3) == [[0, 0, 12, 32]] * 3 + [[0, 0, 384]]
    # dynamic axes stay dynamic
    for inp in simple.graph.input:
        assert [d.dim_param for d in inp.type.tensor_type.shape.dim] == ["batch", "seq"]
    _check_parity(model, simple, encoder.tokenizer, sentences, sentence_module)
    # the int8 exclusion of a Q/K/V unit finds the merged MatMul
    names = onnx_nodes_for_units(simple, ["encoder.layer.2.attention.self"])
    assert names == ["/model/encoder/layer.2/attention/self/query_key_value/MatMul"]


def test_simplify_head_and_ffn_pruned_model(encoder, sentence_module, sentences):
    m = copy.deepcopy(sentence_module)
    prune_heads_(m, 1, [0, 3, 5, 7])  # 4 heads of 32 left
    prune_heads_(m, 4, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])  # 11 heads
    prune_ffn_(m, 2, list(range(0, 1536, 3)))  # 512 neurons
    model = _export(m, encoder.tokenizer)
    simple, res = simplify_model(model)
    assert res.reshapes_constant == 24 and res.matmuls_merged == 6
    assert _reshape_shapes(simple, 1) == [[0, 0, 4, 32]] * 3 + [[0, 0, 128]]
    assert _reshape_shapes(simple, 4) == [[0, 0, 11, 32]] * 3 + [[0, 0, 352]]
    assert _reshape_shapes(simple, 0) == [[0, 0, 12, 32]] * 3 + [[0, 0, 384]]
    inits = {t.name: list(t.dims) for t in simple.graph.initializer}
    qkv = [
        inits[n.input[1]]
        for n in simple.graph.node
        if n.op_type == "MatMul"
        and n.name.endswith("layer.1/attention/self/query_key_value/MatMul")
    ]
    assert qkv == [[384, 3 * 128]]
    _check_parity(model, simple, encoder.tokenizer, sentences, m)
    # opt-in passes: one head Reshape for Q/K/V, or ORT MultiHeadAttention per layer
    heads, res = simplify_model(model, merge_heads=True)
    assert res.head_splits_merged == 6
    _check_parity(model, heads, encoder.tokenizer, sentences, m)
    mha, res = simplify_model(model, attention=True)
    assert res.attentions_fused == 6
    n_heads = [
        a.i
        for n in mha.graph.node
        if n.op_type == "MultiHeadAttention"
        for a in n.attribute
        if a.name == "num_heads"
    ]
    assert n_heads == [12, 4, 12, 12, 11, 12]
    _check_parity(model, mha, encoder.tokenizer, sentences, m)

import collections
import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from slimkit.errors import ConfigError
from slimkit.transformers import EncoderInt8, export_encoder, tokenize
from slimkit.transformers.graph_simplify import drop_split_concats, gemms_to_matmuls
from slimkit.transformers.packed import PackedSelfAttention, PackedSentenceEncoder
from slimkit.transformers.structural import prune_ffn_, prune_heads_

ort = pytest.importorskip("onnxruntime")


def _padded(tokenizer, sentences):
    """One batch of very different lengths, so most rows carry padding."""
    batch = tokenize(tokenizer, [sentences[0][:12], *sentences], 64)
    mask = batch["attention_mask"]
    assert mask.float().mean() < 0.8 and (mask.sum(1) < mask.shape[1]).sum() >= 4
    return batch


@torch.no_grad()
def test_packed_equals_the_padded_module_and_leaves_it_alone(encoder, sentence_module, sentences):
    batch = _padded(encoder.tokenizer, sentences)
    ref = sentence_module(**batch)
    packed = PackedSentenceEncoder(sentence_module)
    torch.testing.assert_close(packed(**batch), ref, atol=1e-5, rtol=0)
    # a copy was packed: the caller's layers still run the HF attention
    layer = sentence_module.model.encoder.layer[0]
    assert not isinstance(layer.attention.self, PackedSelfAttention)
    assert isinstance(packed.model.encoder.layer[0].attention.self, PackedSelfAttention)
    with pytest.raises(TypeError, match="only inside PackedSentenceEncoder"):
        packed.model.encoder.layer[0].attention.self(torch.zeros(3, 384))


@torch.no_grad()
def test_packed_follows_pruned_heads_ffn_and_outlier_splits(encoder, sentence_module, sentences):
    from slimkit.config import get_module, set_module
    from slimkit.transformers.outlier_split import OutlierSplitLinear, outlier_channels

    batch = _padded(encoder.tokenizer, sentences)
    m = copy.deepcopy(sentence_module)
    prune_heads_(m, 1, [0, 3, 5, 7])
    prune_ffn_(m, 2, list(range(0, 1536, 3)))
    name = "model.encoder.layer.0.output.dense"
    lin = get_module(m, name)
    set_module(m, name, OutlierSplitLinear(lin, outlier_channels(lin, [batch], m, 4)))
    torch.testing.assert_close(PackedSentenceEncoder(m)(**batch), m(**batch), atol=1e-5, rtol=0)


@pytest.mark.parametrize("attention", ["Attention", "MultiHeadAttention", "onnx"])
def test_packed_onnx_export_parity_on_padded_batches(
    tmp_path, encoder, sentence_module, sentences, attention
):
    path = tmp_path / "packed.onnx"
    res = export_encoder(
        sentence_module,
        encoder.tokenizer,
        path,
        optimize=False,
        simplify=True,
        packed=True,
        attention=attention,
    )
    assert res.max_abs_diff < 1e-4
    graph = onnx.load(str(path)).graph
    ops = collections.Counter(n.op_type for n in graph.node)
    assert ops["NonZero"] == 1 and ops["Gemm"] == 0 and ops["Concat"] <= 2
    matmuls = [n.name for n in graph.node if n.op_type == "MatMul"]
    if attention == "Attention":  # Q/K/V weights inside one node per layer, in its own scope
        att = [n for n in graph.node if n.op_type == "Attention"]
        assert len(att) == 6 and ops["Softmax"] == 0 and len(matmuls) == 18
        assert att[0].domain == "com.microsoft" and "/layer.0/attention/self/" in att[0].name
        assert res.simplified["matmuls_merged"] == 0
    else:
        # Q/K/V: three Gemms -> MatMul + Add -> one MatMul + Split; the Split -> Concat is gone
        assert res.simplified["matmuls_merged"] == 6
        assert res.simplified["split_concats_dropped"] == 6
        assert any("/layer.0/attention/self/query_key_value/" in n for n in matmuls)
    if attention == "MultiHeadAttention":  # each attention core is one ORT node
        assert ops["MultiHeadAttention"] == 6 and ops["Softmax"] == 0
        mha = next(n for n in graph.node if n.op_type == "MultiHeadAttention")
        assert mha.domain == "com.microsoft" and mha.input[3] == ""  # no bias input
        assert res.simplified["head_splits_merged"] == 0
    if attention == "onnx":  # standard ops: one head Reshape + Transpose for Q/K/V
        assert ops["MultiHeadAttention"] == ops["Attention"] == 0 and ops["Softmax"] == 6
        assert res.simplified["head_splits_merged"] == 6
        assert all(n.domain in ("", "ai.onnx") for n in graph.node)
    batch = _padded(encoder.tokenizer, sentences)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {k: v.numpy() for k, v in batch.items()})[0]
    ref = sentence_module(**batch).detach().numpy()
    assert np.abs(got - ref).max() < 1e-4


@pytest.mark.parametrize("attention", ["Attention", "MultiHeadAttention"])
def test_fused_attention_export_follows_pruned_heads(
    tmp_path, encoder, sentence_module, sentences, attention
):
    m = copy.deepcopy(sentence_module)
    prune_heads_(m, 1, [0, 3, 5, 7])  # layer 1: 4 heads, the others 12
    path = tmp_path / "pruned.onnx"
    export_encoder(
        m, encoder.tokenizer, path, optimize=False, simplify=True, packed=True, attention=attention
    )
    heads = [
        next(a.i for a in n.attribute if a.name == "num_heads")
        for n in onnx.load(str(path)).graph.node
        if n.op_type == attention
    ]
    assert heads == [12, 4, 12, 12, 12, 12]
    batch = _padded(encoder.tokenizer, sentences)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {k: v.numpy() for k, v in batch.items()})[0]
    assert np.abs(got - m(**batch).detach().numpy()).max() < 1e-4
    with pytest.raises(ValueError, match="attention op must be one of"):
        PackedSentenceEncoder(m, attention="QAttention")


def test_packed_needs_the_simplified_unfused_export(tmp_path, encoder, sentence_module):
    with pytest.raises(ConfigError, match="packed: true needs simplify: true and optimize: false"):
        EncoderInt8(optimize=True)
    with pytest.raises(ConfigError, match="packed: true needs"):
        EncoderInt8(simplify=False)
    assert not EncoderInt8(optimize=True, packed=False).packed
    with pytest.raises(ConfigError, match="set packed=False"):
        export_encoder(sentence_module, encoder.tokenizer, tmp_path / "x.onnx", packed=True)
    with pytest.raises(ConfigError, match=r"attention must be one of \['Attention', "):
        export_encoder(sentence_module, encoder.tokenizer, tmp_path / "x.onnx", attention="QKV")
    assert not (tmp_path / "x.onnx").exists()


def _run(model: onnx.ModelProto, **feeds: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def test_gemms_become_matmul_add_and_split_concat_goes():
    rng = np.random.default_rng(0)
    w = [rng.standard_normal((4, 6)).astype(np.float32) for _ in range(2)]  # (out, in)
    b = rng.standard_normal(4).astype(np.float32)
    inits = [
        numpy_helper.from_array(w[0], "w0"),
        numpy_helper.from_array(w[1].T.copy(), "w1"),  # (in, out) for transB=0
        numpy_helper.from_array(b, "b"),
        numpy_helper.from_array(np.array([2, 2], np.int64), "sizes"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w0", "b"], ["g0"], name="/l/q/Gemm", transB=1),
        helper.make_node("Gemm", ["x", "w1"], ["g1"], name="/l/k/Gemm"),
        helper.make_node("Split", ["g0", "sizes"], ["s0", "s1"], axis=-1),
        helper.make_node("Concat", ["s0", "s1"], ["c"], axis=1),
        helper.make_node("Add", ["c", "g1"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((5, 6)).astype(np.float32)
    ref = _run(model, x=x)
    out = copy.deepcopy(model)
    assert gemms_to_matmuls(out) == 2
    assert drop_split_concats(out, {"c": ["n", 4]}) == 1
    ops = collections.Counter(n.op_type for n in out.graph.node)
    assert ops["Gemm"] == 0 and ops["MatMul"] == 2
    assert [n.name for n in out.graph.node if n.op_type == "MatMul"] == [
        "/l/q/MatMul",
        "/l/k/MatMul",
    ]
    np.testing.assert_allclose(_run(out, x=x), ref, atol=1e-5, rtol=0)
    # the Concat is left for dead-node elimination; nothing reads it any more
    assert not [n for n in out.graph.node if "c" in n.input]

import onnx

from slimkit.transformers import embed, embedding_fidelity, export_encoder


def test_fused_export_parity_dynamic_axes(tmp_path, encoder, sentence_module, sentences):
    path = tmp_path / "m.onnx"
    res = export_encoder(
        sentence_module, encoder.tokenizer, path, num_heads=12, hidden_size=384, atol=1e-4
    )
    assert res.max_abs_diff < 1e-4
    assert res.fused_ops.get("Attention") == 6 and res.fused_ops.get("SkipLayerNormalization") == 12
    graph = onnx.load(str(path), load_external_data=False)
    dims = [d.dim_param for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "seq"]
    # Whole-sentence embeddings through ORT at batch 8: identical rankings.
    ref = embed(sentence_module, encoder.tokenizer, sentences)
    fid = embedding_fidelity(ref, embed(path, encoder.tokenizer, sentences), k=2)
    assert fid.cosine_min > 0.99999 and fid.spearman > 0.9999

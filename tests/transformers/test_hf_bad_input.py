"""Bad input to the HF encoder path gets a slimkit error naming the rule, the value and the fix,
before any slow work and without leaving files; never a traceback from transformers/torch/ORT."""

import copy
import json
import os
import shutil

import numpy as np
import pytest
import torch

from slimkit.cli import main
from slimkit.errors import ConfigError
from slimkit.transformers import (
    DistillConfig,
    EncoderInt8,
    EncoderStructural,
    MeasureConfig,
    compress_encoder,
    compress_structure,
    default_model_folder,
    embed,
    export_encoder,
    load_encoder,
    quantize_encoder,
    sentence_encoder,
    tokenize,
)
from slimkit.transformers.int8 import sensitivity_scan
from slimkit.transformers.smooth import smooth_encoder_
from slimkit.transformers.structural import distill_, drop_layers_, prune_heads_

FAST = EncoderInt8(auto_exclude=0, smooth={"enabled": False}, outlier_channels=0)


def model_copy(tmp_path, skip=()):
    """The bundled model's files in a new folder (the weights as a symlink unless skipped)."""
    src, dst = default_model_folder(), tmp_path / "model"
    dst.mkdir()
    for p in src.iterdir():
        if p.name in skip:
            continue
        if p.is_dir():
            shutil.copytree(p, dst / p.name)
        elif p.name == "model.safetensors":
            os.symlink(p, dst / p.name)
        else:
            shutil.copyfile(p, dst / p.name)
    return dst


def edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}))


# ---- a broken model folder ---------------------------------------------------------------------


def test_config_json_that_is_not_an_object(tmp_path):
    folder = model_copy(tmp_path)
    (folder / "config.json").write_text("[1, 2]")  # was AttributeError: 'list' ... 'get'
    with pytest.raises(ConfigError, match=r"config.json must hold an object"):
        load_encoder(folder)


def test_config_value_of_the_wrong_type_is_named_as_config_json(tmp_path):
    folder = model_copy(tmp_path)
    edit_config(folder, max_position_embeddings="x")  # was StrictDataclassFieldValidationError
    with pytest.raises(ConfigError, match=r"config.json could not be loaded .*max_position"):
        load_encoder(folder)


def test_config_without_head_count_uses_the_model_types_default(tmp_path):
    folder = model_copy(tmp_path)
    edit_config(folder, num_attention_heads=None)  # was KeyError: 'num_attention_heads'
    assert load_encoder(folder).num_heads == 12  # BERT's default, as transformers loaded it


def test_truncated_weights(tmp_path):
    folder = model_copy(tmp_path, skip=("model.safetensors",))
    data = (default_model_folder() / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])  # was SafetensorError
    with pytest.raises(ConfigError, match=r"model .* could not be loaded \(SafetensorError"):
        load_encoder(folder)


def test_hidden_size_that_does_not_divide_into_heads(tmp_path):
    folder = model_copy(tmp_path)
    edit_config(folder, hidden_size=256)  # was ValueError from modeling_bert
    with pytest.raises(ConfigError, match=r"not a multiple of the number of attention heads"):
        load_encoder(folder)


def test_weights_missing_from_the_file_are_not_left_random(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = model_copy(tmp_path, skip=("model.safetensors",))
    tensors = load_file(default_model_folder() / "model.safetensors")
    save_file(
        {k: v for k, v in tensors.items() if "layer.5." not in k}, folder / "model.safetensors"
    )
    with pytest.raises(ConfigError, match=r"lacks weights config.json needs \(16, e.g."):
        load_encoder(folder)  # was: loaded with layer 5 randomly initialised


def test_layers_the_config_does_not_have_are_not_dropped(tmp_path):
    folder = model_copy(tmp_path)
    edit_config(folder, num_hidden_layers=3)  # was: loaded 3 of the 6 layers silently
    with pytest.raises(ConfigError, match=r"holds weights config.json has no place for"):
        load_encoder(folder)


def test_broken_tokenizer_file(tmp_path):
    folder = model_copy(tmp_path)
    (folder / "tokenizer.json").write_text("{oops")  # was JSONDecodeError
    with pytest.raises(ConfigError, match=r"tokenizer .* could not be loaded \(JSONDecodeError"):
        load_encoder(folder)


def test_broken_sentence_transformers_files(tmp_path):
    folder = model_copy(tmp_path)
    (folder / "modules.json").write_text("{oops")  # was JSONDecodeError
    with pytest.raises(ConfigError, match=r"modules.json is not readable JSON"):
        load_encoder(folder)
    (folder / "modules.json").write_text('{"a": 1}')  # was AttributeError
    with pytest.raises(ConfigError, match=r"modules.json must hold a list"):
        load_encoder(folder)
    mods = json.loads((default_model_folder() / "modules.json").read_text())
    dense = {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}
    (folder / "modules.json").write_text(json.dumps([*mods, dense]))  # was dropped silently
    with pytest.raises(ConfigError, match=r"modules \['sentence_transformers.models.Dense'\]"):
        load_encoder(folder)
    sparse = "sentence_transformers.sparse_encoder.models."  # SPLADE: its names end the same way
    splade = [
        {**mods[0], "type": sparse + "MLMTransformer"},
        {**mods[1], "type": sparse + "SpladePooling"},
    ]
    (folder / "modules.json").write_text(json.dumps(splade))
    with pytest.raises(ConfigError, match=r"MLMTransformer', .*SpladePooling'\], but slimkit"):
        load_encoder(folder)
    shutil.copyfile(default_model_folder() / "modules.json", folder / "modules.json")
    pool = folder / "1_Pooling" / "config.json"
    original = json.loads(pool.read_text())
    for modes in (["max_tokens"], ["mean_tokens", "max_tokens"], ["mean_sqrt_len_tokens"]):
        flags = {k: k[len("pooling_mode_") :] in modes for k in original if k.startswith("pooling")}
        pool.write_text(json.dumps({**original, **flags}))  # each was embedded as mean pooling
        with pytest.raises(ConfigError, match=r"asks for pooling .* mean or CLS pooling"):
            load_encoder(folder)
    pool.write_text(json.dumps(original))
    assert load_encoder(folder).pooling == "mean"
    for bad in ('"abc"', "-5", "2"):  # was ValueError from int() / a max_length of -5 or 2
        (folder / "sentence_bert_config.json").write_text(f'{{"max_seq_length": {bad}}}')
        with pytest.raises(ConfigError, match=r"max_seq_length must be an integer >= 3"):
            load_encoder(folder)


def test_folder_of_the_wrong_type():
    with pytest.raises(ConfigError, match=r"folder must be a path .* got int: 123"):
        load_encoder(123)  # was TypeError from pathlib


# ---- embed / tokenize ---------------------------------------------------------------------------


def test_sentences_that_are_not_a_list(sentence_module, encoder):
    tok = encoder.tokenizer
    with pytest.raises(ConfigError, match=r"got NoneType: None"):  # said "an empty list"
        embed(sentence_module, tok, None)
    with pytest.raises(ConfigError, match=r"got int: 42"):  # was TypeError
        embed(sentence_module, tok, 42)
    emb = embed(sentence_module, tok, (s for s in ["a cat", "a dog"]))  # was TypeError: len()
    assert emb.shape == (2, 384)


def test_max_length_past_the_models_positions(sentence_module, encoder):
    with pytest.raises(ConfigError, match=r"at most the model's 512 positions"):
        embed(sentence_module, encoder.tokenizer, ["word " * 700], max_length=1000)


def test_tokenize_checks_max_length(encoder):
    with pytest.raises(ConfigError, match=r"max_length must be an integer >= 3, but got 0"):
        tokenize(encoder.tokenizer, ["a cat"], 0)  # was accepted (no truncation at all)


def test_model_and_encoder_of_the_wrong_type(encoder):
    with pytest.raises(ConfigError, match=r"model must be a SentenceEncoder"):
        embed(None, encoder.tokenizer, ["a cat"])
    with pytest.raises(ConfigError, match=r"takes what load_encoder returns"):
        sentence_encoder("some/folder")
    module = sentence_encoder(encoder)
    for bad in (None, "some/folder"):  # were TypeErrors: "'NoneType' object is not callable"
        with pytest.raises(ConfigError, match=r"tokenizer must be a Hugging Face tokenizer"):
            embed(module, bad, ["a cat"])


def _foreign_encoder_onnx(path, inputs, rank):
    """A tiny graph shaped like another tool's export: ``inputs`` in, a rank-``rank`` output."""
    import onnx
    from onnx import TensorProto, helper

    ins = [helper.make_tensor_value_info(n, TensorProto.INT64, ["B", "T"]) for n in inputs]
    dims = ["B", "T", 1][:rank]
    nodes = [helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT)]
    if rank == 3:
        axes = helper.make_tensor("axes", TensorProto.INT64, [1], [2])
        nodes.append(helper.make_node("Unsqueeze", ["f", "axes"], ["out"]))
        inits = [axes]
    else:
        nodes.append(helper.make_node("Identity", ["f"], ["out"]))
        inits = []
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, dims)
    graph = helper.make_graph(nodes, "foreign", ins, [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def test_an_onnx_graph_that_is_not_a_sentence_encoder(tmp_path, encoder):
    tok = encoder.tokenizer
    optimum = ["input_ids", "attention_mask", "token_type_ids"]  # Optimum's layout
    cases = [(optimum, 3, "token_type_ids"), (optimum[:2], 3, r"shape \['B', 'T', 1\]")]
    for i, (inputs, rank, named) in enumerate(cases):
        path = _foreign_encoder_onnx(tmp_path / f"m{i}.onnx", inputs, rank)
        # were ORT's "Required inputs (['token_type_ids']) are missing" and 3-D "embeddings"
        with pytest.raises(ConfigError, match=rf"not a sentence-embedding graph.*{named}"):
            embed(path, tok, ["a cat", "a dog"])
    renamed = _foreign_encoder_onnx(tmp_path / "r.onnx", ["attention_mask", "input_ids"], 2)
    out = embed(renamed, tok, ["a cat sat"])  # fed by name, not position: this graph casts ids
    ids = tokenize(tok, ["a cat sat"], 256)["input_ids"].float()
    assert torch.equal(out, ids)


# ---- export / quantize --------------------------------------------------------------------------


def test_export_arguments_checked_before_exporting(sentence_module, encoder, tmp_path):
    tok, out = encoder.tokenizer, tmp_path / "m.onnx"
    with pytest.raises(ConfigError, match=r"atol must be a number >= 0"):  # was a ParityError
        export_encoder(sentence_module, tok, out, atol=-1.0)
    with pytest.raises(ConfigError, match=r"hidden_size must be a multiple of num_heads"):
        export_encoder(sentence_module, tok, out, num_heads=5, hidden_size=384)  # AssertionError
    with pytest.raises(ConfigError, match=r"num_heads must be an integer >= 0"):
        export_encoder(sentence_module, tok, out, num_heads=-1, hidden_size=384)
    with pytest.raises(ConfigError, match=r"max_length must be an integer >= 3"):
        export_encoder(sentence_module, tok, out, max_length=0)  # was written, unchecked
    with pytest.raises(ConfigError, match=r"module must be a SentenceEncoder .* got Linear"):
        export_encoder(torch.nn.Linear(4, 4), tok, out)  # was a TypeError from the tracer
    with pytest.raises(ConfigError, match=r"module must be a SentenceEncoder .* got BertModel"):
        export_encoder(sentence_module.model, tok, out)  # the bare HF model, without pooling
    with pytest.raises(ConfigError, match=r"tokenizer must be a Hugging Face tokenizer"):
        export_encoder(sentence_module, None, out)
    assert not out.exists()


def test_quantize_arguments_checked_before_the_scan(sentence_module, encoder, tmp_path, sentences):
    tok, out = encoder.tokenizer, tmp_path / "q.onnx"
    with pytest.raises(ConfigError, match=r"got the string 'one long sentence'"):
        quantize_encoder(sentence_module, tok, out, FAST, "one long sentence")  # per character
    with pytest.raises(ConfigError, match=r"got NoneType"):
        quantize_encoder(sentence_module, tok, out, FAST, None)  # was TypeError: len()
    with pytest.raises(ConfigError, match=r"cfg must be an EncoderInt8"):
        quantize_encoder(sentence_module, tok, out, {"mode": "dynamic"}, sentences)
    with pytest.raises(ConfigError, match=r"auto_exclude must leave some unit int8"):
        quantize_encoder(
            sentence_module,
            tok,
            out,
            EncoderInt8(auto_exclude=96, smooth={"enabled": False}, outlier_channels=0),
            sentences,
        )  # was: every unit kept fp32, no int8 at all
    with pytest.raises(ConfigError, match=r"max_length must be an integer >= 3"):
        quantize_encoder(sentence_module, tok, out, FAST, sentences, max_length=0)
    assert not out.exists()


def test_config_fields_of_the_wrong_type():
    with pytest.raises(ConfigError, match=r"smooth must be a SmoothConfig"):
        EncoderInt8(smooth="yes")
    with pytest.raises(ConfigError, match=r"exclude pattern 're:\[' is not a valid regex"):
        EncoderInt8(exclude=["re:["])
    with pytest.raises(ConfigError, match=r"exclude entries must be non-empty strings"):
        EncoderInt8(exclude=[""])
    with pytest.raises(ConfigError, match=r"distill must be a DistillConfig"):
        EncoderStructural(distill="fast")
    with pytest.raises(ConfigError, match=r"distill.seed must be an integer"):
        DistillConfig(seed="a")


def test_structural_functions_check_their_arguments(sentence_module, encoder):
    tok = encoder.tokenizer
    cfg = EncoderStructural(ffn_fraction=0.3, distill={"steps": 1})
    with pytest.raises(ConfigError, match=r"module must be a SentenceEncoder .* got Encoder"):
        compress_structure(encoder, tok, cfg, ["a cat"])  # was AttributeError: no 'eval'
    with pytest.raises(ConfigError, match=r"student must be a SentenceEncoder .* got BertModel"):
        distill_(sentence_module.model, sentence_module, tok, ["a cat"], DistillConfig(steps=1))
    with pytest.raises(ConfigError, match=r"cfg must be a DistillConfig"):
        distill_(sentence_module, sentence_module, tok, ["a cat"], {"steps": 1})
    with pytest.raises(ConfigError, match=r"got the string"):  # trained on its characters
        distill_(sentence_module, sentence_module, tok, "one sentence", DistillConfig(steps=1))
    m = copy.deepcopy(sentence_module)
    with pytest.raises(ConfigError, match=r"keep_heads must be .* subset of 0..11"):
        prune_heads_(m, 0, [0, 12])  # was a torch IndexError
    with pytest.raises(ConfigError, match=r"keep_heads must be a list of indices"):
        prune_heads_(m, 0, 8)  # was TypeError
    with pytest.raises(ConfigError, match=r"layer must be an encoder layer index in 0..5"):
        prune_heads_(m, 6, [0])
    with pytest.raises(ConfigError, match=r"each index once"):
        drop_layers_(m, [0, 0])  # shared one layer twice, silently
    assert (
        len(m.model.encoder.layer) == 6
        and m.model.encoder.layer[0].attention.self.query.out_features == 384
    )
    prune_heads_(m, np.int64(1), np.array([0, 3]))  # numpy (and tensor) indices still work
    assert m.model.encoder.layer[1].attention.self.num_attention_heads == 2


def test_smoothing_twice_and_sentences_for_batches(sentence_module, encoder, sentences, tmp_path):
    m = copy.deepcopy(sentence_module)
    with pytest.raises(ConfigError, match=r"batches must be a non-empty list of tokenized"):
        smooth_encoder_(m, sentences)  # was TypeError: string indices must be integers
    with pytest.raises(ConfigError, match=r"batches must be a non-empty list of tokenized"):
        sensitivity_scan(m, sentences)
    batches = [tokenize(encoder.tokenizer, sentences[:4], 64)]
    smooth_encoder_(m, batches, kinds=("intermediate.dense",))
    with pytest.raises(ConfigError, match=r"intermediate.dense is already smoothed"):
        smooth_encoder_(m, batches)  # was a bare AssertionError
    out = tmp_path / "q.onnx"
    with pytest.raises(ConfigError, match=r"already smoothed .*'enabled': False"):
        quantize_encoder(m, encoder.tokenizer, out, EncoderInt8(auto_exclude=0), sentences)
    assert not out.exists()


def test_keep_layers_naming_every_layer_prunes_nothing(
    sentence_module, encoder, tmp_path, monkeypatch
):
    from slimkit.transformers import onnx_export

    cfg = EncoderStructural(keep_layers=(0, 1, 2, 3, 4, 5))
    with pytest.raises(ConfigError, match=r"prunes nothing: keep_layers \[0, 1, 2, 3, 4, 5\]"):
        compress_structure(sentence_module, encoder.tokenizer, cfg, ["a cat", "a dog"])
    out, exported = tmp_path / "run", []
    monkeypatch.setattr(onnx_export, "export_encoder", lambda *a, **k: exported.append(a))
    with pytest.raises(ConfigError, match=r"prunes nothing"):
        compress_encoder(None, out, structural=cfg, sentences=["a cat", "a dog"], measure=None)
    assert not out.exists() and exported == []  # refused before the 90 MB fp32 export


def test_compress_structure_bad_sentences_and_config(sentence_module, encoder):
    cfg = EncoderStructural(keep_layers=(0, 1), distill={"steps": 2, "eval_every": 1})
    with pytest.raises(ConfigError, match=r"non-empty list of strings, but got an empty list"):
        compress_structure(sentence_module, encoder.tokenizer, cfg, [])  # was IndexError
    with pytest.raises(ConfigError, match=r"cfg must be an EncoderStructural"):
        compress_structure(sentence_module, encoder.tokenizer, {"keep_layers": [0]}, ["a"])


# ---- compress_encoder and the CLI ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sentences": "just one string"}, r"got the string"),  # ran on its characters
        ({"int8": "dynamic"}, r"int8 must be EncoderInt8\(...\) or None"),
        ({"structural": {"keep_layers": [0]}}, r"structural must be EncoderStructural"),
        ({"measure": True}, r"measure must be MeasureConfig"),
        (
            {
                "int8": None,
                "structural": EncoderStructural(ffn_fraction=0.2),
                "sentences": ["a", "b", "c"],
                "measure": MeasureConfig(),
            },
            r"needs more than 5 sentences, but got 3",  # was a k error after all the work
        ),
        # wrote two identical fp32 models
        ({"int8": None, "structural": None}, r"both None: nothing to compress"),
        # distilled an unchanged copy for minutes
        ({"structural": EncoderStructural(distill={"steps": 600})}, r"prunes nothing"),
    ],
)
def test_compress_encoder_refuses_before_writing(tmp_path, kwargs, message):
    out = tmp_path / "run"
    kwargs = {"measure": None, "sentences": ["a cat", "a dog"], "int8": FAST, **kwargs}
    with pytest.raises(ConfigError, match=message):
        compress_encoder(tmp_path / "not-loaded", out, **kwargs)
    assert not out.exists()


def test_hf_export_refuses_to_replace_a_file_of_the_model(tmp_path, capsys):
    folder = model_copy(tmp_path)
    before = (folder / "tokenizer.json").read_bytes()
    assert main(["hf", "export", str(folder), "--out", str(folder / "tokenizer.json")]) == 2
    assert "is a file of the model folder" in capsys.readouterr().err
    assert (folder / "tokenizer.json").read_bytes() == before  # was replaced by the ONNX model


def test_hf_quantize_checks_unlabelled_even_without_pruning(tmp_path, capsys):
    out = tmp_path / "never"  # was ignored: exit 0 after an int8 run
    assert main(["hf", "quantize", "--out", str(out), "--unlabelled", "bogus"]) == 2
    assert "unlabelled_text must be" in capsys.readouterr().err
    assert not out.exists()


def test_hf_embed_on_a_broken_tokenizer(tmp_path, capsys):
    folder = model_copy(tmp_path)
    (folder / "tokenizer.json").write_text("{oops")
    assert main(["hf", "embed", str(folder), "--text", "hi"]) == 2  # was a JSONDecodeError
    assert "could not be loaded" in capsys.readouterr().err


def test_auto_exclude_edges_and_checked_before_the_fp32_export(tmp_path):
    from slimkit.transformers.int8 import check_auto_exclude

    check_auto_exclude(EncoderInt8(auto_exclude=23, outlier_channels=0), 6)  # one unit int8
    # with outlier channels the chosen FFN units still run int8 (split): not refused
    check_auto_exclude(EncoderInt8(auto_exclude=24, outlier_channels=8), 6)
    with pytest.raises(ConfigError, match=r"model has 8 units.*pass at most 7"):
        check_auto_exclude(EncoderInt8(auto_exclude=8, outlier_channels=0), 2)
    out = tmp_path / "run"  # 2 kept layers = 8 units: refused before the 90 MB export
    with pytest.raises(ConfigError, match="auto_exclude must leave some unit int8"):
        compress_encoder(
            None,
            out,
            int8=EncoderInt8(auto_exclude=8, outlier_channels=0),
            structural=EncoderStructural(keep_layers=(0, 1)),
            measure=None,
        )
    assert not out.exists()


def test_hf_export_may_replace_an_earlier_export_inside_the_model_folder(tmp_path):
    from slimkit.cli.hf import _refuse_model_file

    folder = model_copy(tmp_path)
    (folder / "onnx").mkdir()
    (folder / "onnx" / "model.onnx").write_text("an earlier export")
    _refuse_model_file(folder, folder / "onnx" / "model.onnx")  # the Optimum layout: allowed
    with pytest.raises(ConfigError, match="is a file of the model folder"):
        _refuse_model_file(folder, folder / "model.safetensors")


def test_max_length_may_be_a_numpy_integer(encoder):
    import numpy as np

    ids = tokenize(encoder.tokenizer, ["a short sentence"], np.int64(8))
    assert ids["input_ids"].shape[1] <= 8


def test_weights_outside_the_encoder_are_left_out_not_refused(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    folder = model_copy(tmp_path, skip=("model.safetensors",))
    weights = load_file(default_model_folder() / "model.safetensors")
    weights["classifier.weight"] = torch.zeros(2, 384)  # a task head: not the encoder's
    save_file(weights, folder / "model.safetensors")
    assert load_encoder(folder).hidden_size == 384
    weights["encoder.layer.6.output.dense.bias"] = torch.zeros(384)  # a layer config lacks
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(ConfigError, match="holds weights config.json has no place for"):
        load_encoder(folder)

import pickle

import pytest
import torch

from slimkit import io as slim_io
from slimkit.errors import ConfigError, NumericsError, UnsafeFileError
from slimkit.models import build_model, describe

EXECUTED = []


class Payload:
    def __reduce__(self):
        return (EXECUTED.append, ("pwned",))


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"weight": Payload()}, fh)
    with pytest.raises(UnsafeFileError, match="weights_only=True"):
        slim_io.load(path, model=build_model("lenet300"))
    assert EXECUTED == []


def test_plain_state_dict_pt_loads(tmp_path):
    model = build_model("lenet300")
    path = tmp_path / "ok.pt"
    torch.save(model.state_dict(), path)
    other = slim_io.load(path, model=build_model("lenet300"))
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values())
    )
    with pytest.raises(ConfigError, match="pass model="):
        slim_io.load(path)


@pytest.mark.parametrize("kind", ["zip", "pickle", "truncated"])
def test_torch_file_without_model_is_refused_before_torch_load(tmp_path, monkeypatch, kind):
    # load(x.pt) without model= unpickled the file (torch.load) and only then refused it; an
    # evil or broken file gave an unpickling error instead of the refusal.
    path = tmp_path / ("w.bin" if kind == "zip" else "w.pt")
    if kind == "zip":
        torch.save({"weight": Payload()}, path)
    elif kind == "pickle":
        with open(path, "wb") as fh:
            pickle.dump({"weight": Payload()}, fh, protocol=2)
    else:
        path.write_bytes(b"\x80\x02")
    calls = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a))
    with pytest.raises(ConfigError, match=r"w\.(pt|bin) is a torch\.save file") as err:
        slim_io.load(path)
    assert calls == [] and EXECUTED == []
    # Both fixes: a Python caller can pass model=, a CLI user needs a file with its architecture.
    assert "slimkit.load(path, model=net)" in str(err.value)
    assert "slimkit.save(m, 'model.safetensors')" in str(err.value)


def test_cli_names_a_fix_it_can_use_for_weights_only_files(tmp_path, capsys):
    # `slimkit inspect w.pt` said only "pass model=...", which a command line cannot do.
    from safetensors.torch import save_file

    from slimkit.cli import main

    model = build_model("lenet300", image_size=8)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    save_file(slim_io.state_tensors(model), str(tmp_path / "plain.safetensors"))
    for name in ("w.pt", "plain.safetensors"):
        assert main(["inspect", str(tmp_path / name)]) == 2
        err = " ".join(capsys.readouterr().err.split())  # rich/typer may wrap the paragraph
        assert name in err and "The slimkit command reads only files that carry" in err, err
        assert "slimkit.save(m, 'model.safetensors')" in err, err


def test_nonfinite_weights_refused_unless_allowed(tmp_path):
    model = build_model("lenet300")
    with torch.no_grad():
        model.fc2.weight[0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    with pytest.raises(NumericsError, match="load would refuse the file; nothing was written"):
        slim_io.save(model, path)
    assert not path.exists()
    slim_io.save(model, path, allow_nonfinite=True)
    with pytest.raises(NumericsError, match="fc2.weight"):
        slim_io.load(path)
    assert torch.isnan(slim_io.load(path, allow_nonfinite=True).fc2.weight[0, 0])


def test_load_gives_back_each_tensors_float_dtype(tmp_path, mixed_precision_lenet300):
    # The model was rebuilt in float32 and the weights copied into it: a .double() model (or a
    # bf16 layer) came back as float32, its float64 values rounded.
    model = mixed_precision_lenet300
    path = tmp_path / "mixed.safetensors"
    slim_io.save(model, path)
    loaded = slim_io.load(path)
    want = model.state_dict()
    got = loaded.state_dict()
    assert {k: v.dtype for k, v in got.items()} == {k: v.dtype for k, v in want.items()}
    assert {v.dtype for v in got.values()} == {torch.float64, torch.bfloat16, torch.float16}
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in loaded.parameters())
    # Weights loaded into a model the caller passes take that model's dtypes (torch's rule).
    into = slim_io.load(path, model=build_model("lenet300", image_size=8))
    assert {v.dtype for v in into.state_dict().values()} == {torch.float32}


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("name", ["w.PT", "w.Pth", "w.CKPT"])
def test_torch_suffixes_are_matched_in_any_case(tmp_path, name):
    # Only ".pt" was a torch suffix: "w.PT" holding a protocol-4 pickle (not the "PK" / "\x80\x02"
    # bytes also checked) went the safetensors route and got "not a valid safetensors file".
    path = tmp_path / name
    with open(path, "wb") as fh:
        pickle.dump({"weight": Payload()}, fh, protocol=4)
    with pytest.raises(ConfigError, match="is a torch.save file"):
        slim_io.load(path)
    with pytest.raises(UnsafeFileError, match="weights_only=True"):
        slim_io.load(path, model=build_model("lenet300"))
    assert EXECUTED == []


def test_save_is_atomic_and_deterministic(tmp_path):
    torch.manual_seed(0)
    model = build_model("lenet5", image_size=8)
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    slim_io.save(model, a)
    slim_io.save(model, b)
    assert a.read_bytes() == b.read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_garbage_file_is_a_clear_error(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(UnsafeFileError, match="not a valid safetensors"):
        slim_io.load(path)


def test_a_folder_or_a_broken_manifest_is_a_clear_error(tmp_path):
    (tmp_path / "m.safetensors").mkdir()
    with pytest.raises(ConfigError, match="is a folder, not a model file"):
        slim_io.load(tmp_path / "m.safetensors")
    from safetensors.torch import save_file

    model = build_model("lenet300", image_size=8)
    for spec in (
        '{"format": "%s", "version": "%s"}',
        '{"format": "%s", "version": "%s", "spec": "x"}',
    ):
        path = tmp_path / "bad.safetensors"
        manifest = spec % (slim_io.FORMAT, slim_io.FORMAT_VERSION)
        save_file(slim_io.state_tensors(model), str(path), metadata={"slimkit": manifest})
        with pytest.raises(ConfigError, match="manifest does not describe a model"):
            slim_io.load(path)


@pytest.mark.parametrize("kind", ["zip", "pickle"])
def test_torch_file_named_safetensors_is_refused_without_unpickling(tmp_path, kind):
    # torch.load hands any path ending in .safetensors to safetensors (SafetensorError traceback);
    # slimkit must refuse it by its bytes, naming the file, and never unpickle it.
    path = tmp_path / "weights.safetensors"
    if kind == "zip":
        torch.save({"weight": Payload()}, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump({"weight": Payload()}, fh, protocol=2)
    with pytest.raises(UnsafeFileError, match=r"weights\.safetensors is not a safetensors file"):
        slim_io.load(path)
    with pytest.raises(UnsafeFileError, match="re-save the weights with slimkit.save"):
        slim_io.load(path, model=build_model("lenet300"))
    assert EXECUTED == []


def test_truncated_torch_file_is_a_clear_error(tmp_path):
    model = build_model("lenet300", image_size=8)
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UnsafeFileError, match=r"w\.pt is not a readable torch.save file"):
        slim_io.load(path, model=model)
    path.write_bytes(b"\x80\x02")  # a pickle that ends at once: EOFError inside torch
    with pytest.raises(UnsafeFileError, match="ends early"):
        slim_io.load(path, model=model)


def _edited_copy(tmp_path, edit, name="edited.safetensors"):
    """A lenet5 (8x8) file whose manifest was changed by ``edit(manifest)``."""
    import json

    from safetensors.torch import save_file

    model = build_model("lenet5", image_size=8)
    manifest = {
        "format": slim_io.FORMAT,
        "version": slim_io.FORMAT_VERSION,
        "spec": describe(model),
        "meta": {},
    }
    edit(manifest)
    path = tmp_path / name
    save_file(slim_io.state_tensors(model), str(path), metadata={"slimkit": json.dumps(manifest)})
    return path


def _set_conv1(key, value):
    def edit(manifest):
        manifest["spec"]["tree"]["children"]["conv1"]["args"][key] = value

    return edit


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("out_channels", -5, "out_channels must be an integer >= 1, but got -5"),
        ("out_channels", 0, "out_channels must be an integer >= 1, but got 0"),
        ("out_channels", "20", "out_channels must be an integer >= 1, but got '20'"),
        ("out_channels", 2.5, "out_channels must be an integer >= 1, but got 2.5"),
        ("in_channels", True, "in_channels must be an integer >= 1, but got True"),
        ("kernel_size", "big", "kernel_size must be an integer >= 1 or a list of them"),
        ("groups", 3, "Conv2d rejects the arguments"),  # in_channels=1 not divisible by 3
        ("padding", [-3, -3], "padding must be an integer >= 0 or a list of them"),
        ("stride", 0, "stride must be an integer >= 1 or a list of them, but got 0"),
        ("eps", -1, "eps must be a number > 0"),
        ("bogus", 1, "unexpected keyword argument 'bogus'"),
    ],
)
def test_manifest_layer_args_torch_rejects_are_config_errors(tmp_path, key, value, message):
    # These raised torch's RuntimeError/TypeError from deep inside nn.Conv2d.
    path = _edited_copy(tmp_path, _set_conv1(key, value))
    with pytest.raises(ConfigError, match=r"edited\.safetensors: .*layer 'conv1'") as err:
        slim_io.load(path)
    assert message in str(err.value)
    assert "re-save the model with slimkit" in str(err.value)


def test_huge_channel_count_is_refused_before_allocating(tmp_path):
    # 10**12 output channels made slimkit try a 100 TB allocation. The spec is now built on the
    # meta device and its shapes compared with the file's header before anything is allocated.
    path = _edited_copy(tmp_path, _set_conv1("out_channels", 10**12))
    with pytest.raises(ConfigError, match=r"edited\.safetensors: ") as err:
        slim_io.load(path)
    assert "'conv1.weight' has shape [1000000000000, 1, 5, 5] in the spec but [20, 1, 5, 5]" in (
        str(err.value)
    )


def test_zoo_kwargs_torch_rejects_are_config_errors(tmp_path):
    def edit(manifest):
        manifest["spec"]["arch"]["kwargs"]["in_channels"] = -1

    with pytest.raises(
        ConfigError, match=r"edited\.safetensors: .*zoo model 'lenet5'.*in_channels"
    ):
        slim_io.load(_edited_copy(tmp_path, edit))


def test_weights_that_do_not_fit_the_given_model_are_a_config_error(tmp_path):
    path = tmp_path / "w.safetensors"
    slim_io.save(build_model("lenet300", image_size=8), path)
    with pytest.raises(ConfigError, match=r"w\.safetensors: its tensors must match.*fc1.weight"):
        slim_io.load(path, model=build_model("lenet300", image_size=28))
    pt = tmp_path / "w.pt"
    torch.save(build_model("lenet300", image_size=8).state_dict(), pt)
    with pytest.raises(ConfigError, match=r"w\.pt: its tensors must match"):
        slim_io.load(pt, model=build_model("lenet5"))


def _unchecked_sparse(kind):
    if kind == "sparse_coo":  # an index far outside the (10, 100) shape, unchecked on load
        idx = torch.tensor([[0, 5_000_000], [0, 3]])
        return torch.sparse_coo_tensor(idx, torch.ones(2), (10, 100), check_invariants=False)
    crow = torch.tensor([0, 1 << 20])  # claims 1M nonzeros, holds 1 (an out-of-bounds read)
    return torch.sparse_csr_tensor(
        crow, torch.tensor([0]), torch.ones(1), (1, 4), check_invariants=False
    )


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("kind", ["sparse_coo", "sparse_csr", "meta"])
def test_torch_file_with_non_dense_tensors_is_refused(tmp_path, kind):
    # torch.load(weights_only=True) rebuilds sparse tensors without validating their indices;
    # they reached torch.isfinite / copy_ and raised NotImplementedError / RuntimeError there.
    model = build_model("lenet300", image_size=8)
    state = model.state_dict()
    state["fc3.weight"] = (
        torch.empty(10, 100, device="meta") if kind == "meta" else _unchecked_sparse(kind)
    )
    path = tmp_path / "w.pt"
    torch.save(state, path)
    with pytest.raises(UnsafeFileError, match=rf"w\.pt: entry 'fc3.weight' is a {kind}"):
        slim_io.load(path, model=model)


def test_torch_zip_with_compressed_records_is_refused_before_inflating(tmp_path):
    # torch.save stores records uncompressed, but torch.load inflates deflated ones: a 390 KB
    # hand-made .pt held a 400 MB tensor (1.3 GB peak RSS before any check could run).
    import io
    import zipfile

    model = build_model("lenet300", image_size=8)
    plain = tmp_path / "plain.pt"
    torch.save(model.state_dict(), plain)
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    with pytest.raises(UnsafeFileError, match=r"bomb\.pt holds \d+ compressed zip record"):
        slim_io.load(bomb, model=model)
    assert {i.compress_type for i in zipfile.ZipFile(plain).infolist()} == {zipfile.ZIP_STORED}
    slim_io.load(plain, model=model)  # what torch.save writes still loads
    legacy = io.BytesIO()
    torch.save(model.state_dict(), legacy, _use_new_zipfile_serialization=False)
    (tmp_path / "legacy.pt").write_bytes(legacy.getvalue())
    slim_io.load(tmp_path / "legacy.pt", model=model)

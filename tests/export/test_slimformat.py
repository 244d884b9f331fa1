"""The .slim artifact: bit-exact load, real compression of pruned + quantized weights, safety."""

import copy
import json

import numpy as np
import pytest
import torch

from slimkit import io as slim_io
from slimkit.errors import NumericsError, SlimkitError, UnsafeFileError
from slimkit.export import entropy, slimformat
from slimkit.models import build_model


def _prune_and_cluster(model, sparsity=0.9, bits=4, seed=0):
    """Magnitude-prune every weight and snap survivors to a kmeans-style codebook (entry 0 = 0.0)."""
    g = torch.Generator().manual_seed(seed)
    for _name, m in model.named_modules():
        if not isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        w = m.weight.data
        k = int(sparsity * w.numel())
        thresh = w.abs().reshape(-1).kthvalue(k).values
        keep = w.abs() > thresh
        book = torch.cat([torch.zeros(1), torch.linspace(-0.3, 0.3, 2**bits - 1)])
        book = book + torch.rand(2**bits, generator=g) * 1e-3 * (book != 0)
        codes = (w[..., None] - book[1:]).abs().argmin(-1) + 1
        codes = torch.where(keep, codes, torch.zeros_like(codes))
        m.weight.data = book[codes]
        m.register_buffer("weight_codebook", book.clone())
        m.slimkit_quant = {"weight": {"scheme": "kmeans", "bits": bits}}
    return model


@pytest.fixture
def lenet():
    torch.manual_seed(0)
    return build_model("lenet5", image_size=28).eval()


def test_dense_model_round_trips_bit_exactly(tmp_path):
    torch.manual_seed(1)
    for name in ("lenet300", "resnet", "mobilenetv2"):
        model = build_model(name, image_size=8).eval()
        path = tmp_path / f"{name}.slim"
        n = slimformat.save(model, path)
        assert n == path.stat().st_size
        loaded = slim_io.load(path)  # dispatched by the magic bytes
        for k, v in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v), k
        x = torch.randn(3, 1, 8, 8)
        assert torch.equal(loaded(x), model(x))


def test_pruned_quantized_lenet5_is_small_and_exact(tmp_path, lenet):
    model = _prune_and_cluster(lenet)
    x = torch.randn(4, 1, 28, 28)
    path = tmp_path / "m.slim"
    n = slimformat.save(model, path)
    loaded = slimformat.load(path)
    assert torch.equal(loaded(x), model(x))
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert loaded.fc1.slimkit_quant == {"weight": {"scheme": "kmeans", "bits": 4}}
    dense = 4 * sum(p.numel() for p in model.parameters())
    # 10% of 431k weights at <= 4 bits + relative indices, entropy coded: well over 40x.
    assert dense / n > 40, (dense, n)
    st = slimformat.stats(path)
    fc1 = next(r for r in st["tensors"] if r["name"] == "fc1.weight")
    assert fc1["encoding"] == "quant" and fc1["nonzeros"] == pytest.approx(0.1 * 400_000, rel=0.01)
    assert fc1["bits_per_weight"] < 1.0
    assert st["file_bytes"] == n


def test_same_model_gives_identical_bytes(lenet):
    model = _prune_and_cluster(lenet)
    assert slimformat.encode(model) == slimformat.encode(copy.deepcopy(model))


def test_palette_and_sparse_dense_paths_are_exact(tmp_path, lenet):
    model = _prune_and_cluster(lenet)
    for m in model.modules():  # without the quant record: palette (grid) encoding
        if hasattr(m, "slimkit_quant"):
            del m.slimkit_quant
    model.fc2.weight.data.normal_()  # a dense float layer
    model.fc2.weight.data[:, ::3] = 0.0
    path = tmp_path / "p.slim"
    slimformat.save(model, path)
    st = {r["name"]: r for r in slimformat.stats(path)["tensors"]}
    assert st["fc1.weight"]["encoding"] == "palette"
    assert st["fc2.weight"]["encoding"] == "dense"
    loaded = slimformat.load(path)
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))


def test_float64_values_off_the_fp32_grid_are_not_palette_coded(tmp_path):
    # The palette table is fp32, and its losslessness check compared fp32 with fp32: a float64
    # tensor on a 3-value grid came back rounded (0.1 is not an fp32 value; 0.1 + 1e-12 and 0.1
    # round to the same fp32 value, so they also merged).
    model = build_model("lenet300", image_size=8, seed=0)
    grid = torch.tensor([0.1, 0.1 + 1e-12, -2.5], dtype=torch.float64)
    model.fc1.register_buffer("calib", grid[torch.arange(512) % 3])
    path = tmp_path / "f64.slim"
    slimformat.save(model, path)
    loaded = slim_io.load(path)
    assert loaded.fc1.calib.dtype == torch.float64
    assert torch.equal(loaded.fc1.calib, model.fc1.calib)
    st = {r["name"]: r for r in slimformat.stats(path)["tensors"]}
    assert st["fc1.calib"]["encoding"] == "dense"
    # float64 values that are fp32 values still get the palette, value for value
    model.fc1.calib = grid.float().double()[torch.arange(512) % 3]
    slimformat.save(model, path)
    st = {r["name"]: r for r in slimformat.stats(path)["tensors"]}
    assert st["fc1.calib"]["encoding"] == "palette"
    assert torch.equal(slim_io.load(path).fc1.calib, model.fc1.calib)


def test_float64_and_half_layers_load_in_their_own_dtypes(tmp_path, mixed_precision_lenet300):
    # The records carry their dtype, but the rebuilt model was float32: a .double() model (or a
    # bf16 / fp16 layer) loaded as float32, its float64 values rounded.
    model = mixed_precision_lenet300
    path = tmp_path / "mixed.slim"
    slimformat.save(model, path)
    want = model.state_dict()
    for loaded in (slimformat.load(path), slim_io.load(path)):
        got = loaded.state_dict()
        assert {k: v.dtype for k, v in got.items()} == {k: v.dtype for k, v in want.items()}
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_relative_indices_with_long_gaps_round_trip():
    rng = np.random.default_rng(0)
    pos = np.sort(rng.choice(100_000, 300, replace=False))
    for b in (4, 8):
        gaps = slimformat._gaps(pos, b)
        assert gaps.max() <= 2**b - 1
        assert np.array_equal(slimformat._positions(gaps, b), pos)


def test_corrupt_and_foreign_files_are_refused(tmp_path, lenet):
    data = slimformat.encode(_prune_and_cluster(lenet))
    bad = tmp_path / "bad.slim"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnsafeFileError):
        slimformat.load(bad)
    newer = bytearray(data)
    newer[8] = 99
    bad.write_bytes(bytes(newer))
    with pytest.raises(UnsafeFileError, match="version 99"):
        slimformat.load(bad)


def test_nonfinite_weights_are_refused_unless_allowed(tmp_path):
    model = build_model("lenet300", image_size=8)
    model.fc3.bias.data[0] = float("nan")
    path = tmp_path / "nan.slim"
    slimformat.save(model, path)
    with pytest.raises(NumericsError, match="fc3.bias"):
        slimformat.load(path)
    assert torch.isnan(slimformat.load(path, allow_nonfinite=True).fc3.bias[0])


def test_nan_on_a_small_grid_round_trips_when_allowed(tmp_path):
    # NaN has no palette entry (bucketize points past the table): such a tensor stays dense.
    # Guards the palette's decode-and-compare check, which must not index with those codes.
    model = build_model("lenet300", image_size=8, seed=0)
    grid = torch.tensor([0.5, float("nan"), -1.0])
    model.fc1.register_buffer("calib", grid[torch.arange(512) % 3])
    path = tmp_path / "nan.slim"
    slimformat.save(model, path)
    got = slimformat.load(path, allow_nonfinite=True).fc1.calib
    assert torch.equal(got.isnan(), model.fc1.calib.isnan())
    assert torch.equal(got.nan_to_num(7.0), model.fc1.calib.nan_to_num(7.0))


# ---- corrupt files: every error is a SlimkitError that names the file --------------------------


def _small_slim(palette=False):
    """A small .slim with quant (or palette), sparse, dense and bias records."""
    torch.manual_seed(0)
    model = _prune_and_cluster(build_model("lenet5", image_size=8, channels=(4, 8), hidden=16))
    if palette:
        for m in model.modules():
            if hasattr(m, "slimkit_quant"):
                del m.slimkit_quant
    return slimformat.encode(model)


def _must_name_the_file(path, fn):
    """Run ``fn(path)``: it may succeed, else it must raise a SlimkitError naming ``path``."""
    try:
        fn(path)
    except SlimkitError as exc:
        assert str(path) in str(exc), str(exc)


def test_truncated_and_bit_flipped_files_name_the_file(tmp_path):
    # A corrupt .slim raised e.g. "corrupt lzma stream: Corrupt input data" with no file name.
    rng = np.random.default_rng(0)
    for palette in (False, True):
        data = _small_slim(palette)
        path = tmp_path / "corrupt.slim"
        cuts = sorted({*range(0, 40), *rng.integers(40, len(data), 40).tolist()})
        flips = rng.integers(8, len(data), 120).tolist()
        cases = [data[:n] for n in cuts]
        for i in flips:
            flipped = bytearray(data)
            flipped[i] ^= 1 << int(rng.integers(8))
            cases.append(bytes(flipped))
        for case in cases:
            path.write_bytes(case)
            _must_name_the_file(path, slimformat.load)
            _must_name_the_file(path, slimformat.stats)
            _must_name_the_file(path, slim_io.load)


def _with_manifest(data, edit):
    manifest, base = slimformat.read_manifest(data)
    edit(manifest)
    raw = json.dumps(manifest).encode()
    head = slimformat._HEAD.pack(slimformat.FORMAT_VERSION, 0, len(raw))
    return slimformat.MAGIC + head + raw + data[base:]


def _rec(name):
    return lambda m: next(r for r in m["tensors"] if r["name"] == name)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(tensors="x"), "must hold a 'spec' object and a 'tensors' list"),
        # The manifest's own version went unchecked: only the header's was.
        (lambda m: m.update(version=2), "manifest says .slim format version 2, but its header"),
        (lambda m: m.update(version=True), "manifest says .slim format version True"),
        (lambda m: m.pop("version"), "manifest says .slim format version None"),
        (lambda m: m["tensors"].append(7), "a tensor record must be an object"),
        (lambda m: _rec("fc2.bias")(m).update(shape=[10**12]), "fc2.bias"),
        (lambda m: _rec("fc2.bias")(m).update(shape=[-1]), "shape must be a list of integers"),
        (lambda m: _rec("fc2.bias")(m).update(dtype="object"), "needs dtype in"),
        (lambda m: _rec("fc2.bias")(m).update(encoding="pickle"), "encoding in"),
        (lambda m: _rec("fc2.bias")(m)["values"].update(raw_length=10**15), "decodes to"),
        (lambda m: _rec("fc2.bias")(m)["values"].update(offset=-5), "stream record"),
        (lambda m: _rec("fc2.bias")(m)["values"].update(coding="zip"), "coding must be one of"),
        (lambda m: _rec("fc1.weight")(m)["values"].update(count=10**12), "symbols"),
        (lambda m: _rec("fc1.weight")(m)["values"].update(bits=40), "bits in 1..16"),
        (lambda m: _rec("fc1.weight")(m)["sparse"].update(nonzeros=10**9), "nonzeros"),
        (lambda m: _rec("fc1.weight")(m).update(params={"codebook": "nope"}), "'nope'"),
        (lambda m: _rec("fc1.weight")(m).update(info={"scheme": "x"}), "fc1.weight' is corrupt"),
        (lambda m: m["tensors"].pop(), "is in the spec but not in the file"),
        (
            lambda m: m["spec"]["tree"]["children"]["fc2"]["args"].update(out_features=10**12),
            "'fc2.weight' has shape [1000000000000, 16] in the spec but [10, 16] in the file",
        ),
        (
            lambda m: m["spec"]["tree"]["children"]["conv1"]["args"].update(out_channels=-5),
            "layer 'conv1': Conv2d out_channels must be an integer >= 1, but got -5",
        ),
    ],
)
def test_edited_manifests_are_refused_naming_the_file(tmp_path, edit, message):
    path = tmp_path / "edited.slim"
    path.write_bytes(_with_manifest(_small_slim(), edit))
    for fn in (slimformat.load, slim_io.load):
        with pytest.raises(SlimkitError) as err:
            fn(path)
        assert str(err.value).startswith(str(path)), str(err.value)
        assert message in str(err.value)


def test_a_stream_that_inflates_past_its_record_is_refused(tmp_path):
    # A tiny lzma stream that decodes to 16 MiB: the reader stops at the record's raw_length.
    data = _small_slim()
    manifest, base = slimformat.read_manifest(data)
    bomb = entropy.lzma_encode(bytes(16 * 2**20))
    rec = next(r for r in manifest["tensors"] if r["name"] == "fc2.bias")
    rec["values"].update(offset=len(data) - base, length=len(bomb), coding="lzma")
    raw = json.dumps(manifest).encode()
    head = slimformat._HEAD.pack(slimformat.FORMAT_VERSION, 0, len(raw))
    path = tmp_path / "bomb.slim"
    path.write_bytes(slimformat.MAGIC + head + raw + data[base:] + bomb)
    with pytest.raises(
        UnsafeFileError, match=r"bomb\.slim: tensor 'fc2.bias' is corrupt.*more than"
    ):
        slimformat.load(path)


def test_a_file_named_slim_that_is_not_one_says_so(tmp_path):
    path = tmp_path / "model.slim"
    path.write_bytes(b"\x08\x08\x12\x07pytorch onnx bytes")
    with pytest.raises(UnsafeFileError, match=r"model\.slim is not a \.slim artifact"):
        slim_io.load(path)
    with pytest.raises(UnsafeFileError, match=r"model\.slim is not a \.slim artifact"):
        slimformat.load(path)


def test_an_8bit_kmeans_model_round_trips(tmp_path):
    # its 256-entry codebook is palette-coded, and was decoded after the weight that needs it:
    # every kmeans-8 .slim slimkit wrote failed to load ("refers to ... which is not in it")
    import slimkit as sk

    model = sk.quantize_(
        build_model("lenet300", image_size=8, seed=0), sk.KMeansQuantization(bits=8)
    )
    path = tmp_path / "k8.slim"
    slimformat.save(model, path)
    loaded = slim_io.load(path)
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(model.eval()(x), loaded.eval()(x))


def test_a_quantized_layer_trained_off_its_grid_is_refused_not_stored_as_float(tmp_path):
    # The writer used to fall back to float for such a layer: a bigger file, and no word.
    import slimkit as sk

    model = sk.quantize_(
        build_model("lenet300", image_size=8, seed=0), sk.LinearQuantization(bits=4)
    )
    with torch.no_grad():  # as an optimizer step after quantization would
        model.fc2.weight[0, :3] += 1e-3
    path = tmp_path / "out" / "m.slim"
    with pytest.raises(NumericsError) as err:
        slimformat.save(model, path)
    msg = str(err.value)
    assert "'fc2'" in msg and "4-bit linear quantized" in msg, msg
    assert "of its 30000 weight values 3 are off that grid" in msg, msg
    assert "max deviation 0.001" in msg and "sk.quantize_" in msg, msg
    assert not path.exists() and not (tmp_path / "out").exists()  # nothing half-written
    assert list(tmp_path.iterdir()) == []

    # An existing artifact under that name is left as it was.
    good = sk.quantize_(
        build_model("lenet300", image_size=8, seed=0), sk.LinearQuantization(bits=4)
    )
    slimformat.save(good, path)
    before = path.read_bytes()
    with pytest.raises(NumericsError, match="'fc2'"):
        slimformat.save(model, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.slim"]

    # Both stated fixes work: re-quantize, or drop the record to store the layer as float.
    fixed = sk.quantize_(copy.deepcopy(model), sk.LinearQuantization(bits=4))
    slimformat.save(fixed, tmp_path / "requantized.slim")
    assert "del model.get_submodule('fc2').slimkit_quant" in msg, msg
    del model.get_submodule("fc2").slimkit_quant
    slimformat.save(model, tmp_path / "float.slim")
    st = {r["name"]: r["encoding"] for r in slimformat.stats(tmp_path / "float.slim")["tensors"]}
    assert st["fc1.weight"] == "quant" and st["fc2.weight"] == "dense"
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(slimformat.load(tmp_path / "float.slim")(x), model.eval()(x))


@pytest.mark.parametrize(
    "config", ["KMeansQuantization", "Log2Quantization", "Float16Weights"], ids=str
)
def test_every_scheme_refuses_an_off_grid_weight_naming_the_layer(config):
    import slimkit as sk

    model = sk.quantize_(build_model("lenet300", image_size=8, seed=0), getattr(sk, config)())
    slimformat.encode(model)  # on its grid: fine
    with torch.no_grad():
        model.fc3.weight[1, 1] += 1e-3
    with pytest.raises(NumericsError, match=r"layer 'fc3' is recorded as \d+-bit .* off that grid"):
        slimformat.encode(model)


def test_nan_weights_are_named_as_such_and_dynamic_int8_gets_its_own_fix():
    import slimkit as sk

    model = sk.quantize_(build_model("lenet300", image_size=8, seed=0), sk.LinearQuantization())
    with torch.no_grad():
        model.fc3.weight[0, 0] = float("nan")
    with pytest.raises(NumericsError) as err:
        slimformat.encode(model)
    assert "of its 1000 weight values 1 are NaN/inf;" in str(err.value), str(err.value)
    assert "off that grid" not in str(err.value)

    # DynamicInt8 layers: quantize_ refuses an int8 model, so "re-run sk.quantize_" was no fix.
    model = sk.quantize_(build_model("lenet300", image_size=8, seed=0), sk.DynamicInt8())
    slimformat.encode(model)
    with torch.no_grad():
        model.fc3.weight[0, 0] += 1e-3
    with pytest.raises(NumericsError, match="apply DynamicInt8 again to the float model"):
        slimformat.encode(model)

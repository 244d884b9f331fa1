"""The .slim artifact: bit-exact load, real compression of pruned + quantized weights, safety."""

import copy

import numpy as np
import pytest
import torch

from slimkit import io as slim_io
from slimkit.errors import NumericsError, UnsafeFileError
from slimkit.export import slimformat
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

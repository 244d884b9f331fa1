"""K-means weight sharing: SQNR grows with bits, pinned zero, <= 2^bits values, fine-tuning."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimkit as sk
from slimkit.errors import ConfigError
from slimkit.metrics.fidelity import sqnr_db
from slimkit.quantization import KMeansQuantization, dequantize, finetune_centroids, weight_codes
from slimkit.quantization.kmeans import KMeansCollapseWarning, quantize_kmeans_tensor
from slimkit.testing import check_contract, tiny_models
from slimkit.training import TrainConfig


def test_sqnr_increases_with_bits():
    torch.manual_seed(0)
    w = torch.randn(64, 96)
    s = [sqnr_db(w, dequantize(quantize_kmeans_tensor(w, b))) for b in range(1, 9)]
    assert all(b > a + 3.0 for a, b in zip(s, s[1:])), s
    assert s[3] >= 18.0 and s[7] >= 36.0  # 4 bits, 8 bits on Gaussian weights


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_codebook_size_and_pinned_zero(bits):
    torch.manual_seed(bits)
    w = torch.randn(20, 30)
    w[w.abs() < 0.5] = 0.0  # ~38% pruned
    with pytest.warns(KMeansCollapseWarning) if bits == 1 else warnings.catch_warnings():
        c = quantize_kmeans_tensor(w, bits)
    v = dequantize(c)
    assert c.params["codebook"].shape == (2**bits,)
    assert c.info["pinned_zero"] is True and float(c.params["codebook"][0]) == 0.0
    assert (v[w == 0] == 0).all() and (c.codes[w == 0] == 0).all()
    assert (v[w != 0] != 0).all()  # nonzero weights never collapse onto the pinned zero
    assert torch.unique(v).numel() <= 2**bits


def test_linear_init_keeps_extremes():
    w = torch.cat([torch.randn(1000) * 0.1, torch.tensor([5.0, -5.0])]).reshape(2, -1)
    v = dequantize(quantize_kmeans_tensor(w, 3))
    assert float(v.max()) == pytest.approx(5.0) and float(v.min()) == pytest.approx(-5.0)


def test_config_errors():
    with pytest.raises(ConfigError, match="bits must be in 1..8, but got 9"):
        KMeansQuantization(bits=9)
    with pytest.raises(ConfigError, match="needs k-means quantized layers"):
        finetune_centroids(nn.Sequential(nn.Linear(2, 2)), None)  # type: ignore[arg-type]


def _loss(model, data, batches=4):
    total, n = 0.0, 0
    with torch.no_grad():
        for i, (x, y) in enumerate(data.train):
            if i >= batches:
                break
            total += float(F.cross_entropy(model(x), y, reduction="sum"))
            n += len(y)
    return total / n


def test_finetune_centroids_lowers_loss_codes_fixed(digits):
    torch.manual_seed(0)
    model = sk.build_model("lenet300", image_size=8)
    sk.train(model, digits, TrainConfig(epochs=1, max_batches=15, lr=3e-3))
    sk.quantize_(model, KMeansQuantization(bits=2))
    before = {n: weight_codes(m) for n, m in sk.quantization.quantized_layers(model).items()}
    other = {n: p.detach().clone() for n, p in model.named_parameters() if "weight" not in n}
    loss0 = _loss(model, digits)
    finetune_centroids(model, digits, TrainConfig(epochs=2, lr=3e-3, max_batches=15))
    loss1 = _loss(model, digits)
    assert loss1 < loss0 * 0.97, (loss0, loss1)
    changed = 0
    for n, m in sk.quantization.quantized_layers(model).items():
        after = weight_codes(m)
        assert torch.equal(after.codes, before[n].codes)  # codes fixed
        assert torch.unique(m.weight).numel() <= 4
        changed += int(not torch.equal(after.params["codebook"], before[n].params["codebook"]))
    assert changed == len(before)
    for n, p in model.named_parameters():  # only codebooks (and so weights) moved
        if n in other:
            assert torch.equal(p, other[n])
    assert all(p.requires_grad for p in model.parameters())


def test_finetune_keeps_pinned_zero(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    with torch.no_grad():
        model[1].weight[model[1].weight.abs() < 0.05] = 0.0
    zeros = model[1].weight == 0
    assert zeros.sum() > 100
    sk.quantize_(model, KMeansQuantization(bits=3))
    finetune_centroids(model, digits, TrainConfig(epochs=1, lr=1e-2, max_batches=5))
    c = weight_codes(model[1])
    assert float(c.params["codebook"][0]) == 0.0
    assert torch.equal(model[1].weight == 0, zeros)


@pytest.mark.parametrize(
    ("model_name", "min_sqnr", "onnx"), [("lenet300", 14.0, True), ("resnet", 28.0, False)]
)
def test_contract(model_name, min_sqnr, onnx):
    model = tiny_models()[model_name]
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    check_contract(
        model,
        lambda m: sk.quantize_(m, KMeansQuantization(bits=4)),
        x,
        min_sqnr_db=min_sqnr,
        onnx=onnx,
    )


def test_finetune_via_config_needs_data(digits):
    cfg = KMeansQuantization(bits=2, finetune_epochs=1, finetune_lr=1e-3)
    with pytest.raises(ConfigError, match="finetune_epochs=1 needs training data"):
        sk.quantize_(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), cfg)
    torch.manual_seed(0)
    plain = sk.quantize_(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), KMeansQuantization(2))
    torch.manual_seed(0)
    tuned = sk.quantize_(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), cfg, data=digits)
    before, after = weight_codes(plain[1]), weight_codes(tuned[1])
    assert torch.equal(before.codes, after.codes)  # same clustering, then only centroids moved
    assert not torch.equal(before.params["codebook"], after.params["codebook"])
    assert torch.unique(tuned[1].weight).numel() <= 4


def test_finetune_seed_reaches_the_centroid_training(digits, monkeypatch):
    # The fine-tuning TrainConfig was built without a seed, so it always trained with seed 0
    # and a recipe's `seed:` could not reach it.
    import slimkit.quantization.kmeans as kmeans_mod

    seen = []
    real = kmeans_mod.finetune_centroids
    monkeypatch.setattr(
        kmeans_mod, "finetune_centroids", lambda m, d, cfg: seen.append(cfg) or real(m, d, cfg)
    )

    def book(seed):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        cfg = KMeansQuantization(bits=2, finetune_epochs=1, finetune_lr=1e-2, finetune_seed=seed)
        return weight_codes(sk.quantize_(net, cfg, data=digits)[1]).params["codebook"]

    a, b, c = book(0), book(0), book(3)
    assert [cfg.seed for cfg in seen] == [0, 0, 3]
    assert seen[0] == TrainConfig(epochs=1, lr=1e-2, seed=0)
    assert torch.equal(a, b) and not torch.equal(a, c)  # the seed orders the batches
    with pytest.raises(ConfigError, match="finetune_seed must be an integer"):
        KMeansQuantization(finetune_seed=-1.5)


def test_few_distinct_values_are_kept_exactly():
    # Linear init between min and max put centroids between the values; Lloyd then left
    # [0.1, 0.1, 0.2, 0.3, -5] at [0.175, 0.175, 0.175, 0.175, -5] with 4 entries for 4 values.
    for w, bits in [
        (torch.tensor([0.1, 0.1, 0.2, 0.3, -5.0]), 2),
        (torch.tensor([1.0, 2.0, 2.0, 2.0]), 2),
        (torch.tensor([-1.0, 1.0, 0.0, 0.0]), 2),  # pinned zero + 2 free values in 3 entries
        (torch.randint(-1, 2, (16, 16)).float() * 0.5, 2),  # ternary
    ]:
        c = quantize_kmeans_tensor(w, bits)
        assert torch.equal(dequantize(c), w), w
        assert c.params["codebook"].shape == (2**bits,)


def test_no_codebook_entry_is_left_empty():
    # One outlier drew the linear init apart: 6 of 16 clusters stayed empty (15.5 dB).
    torch.manual_seed(0)
    w = torch.cat([torch.randn(4095), torch.tensor([12.0])]).reshape(64, 64)
    for bits, min_sqnr in [(3, 13.0), (4, 18.5)]:
        c = quantize_kmeans_tensor(w, bits)
        assert torch.unique(c.codes).numel() == 2**bits, bits
        assert sqnr_db(w, dequantize(c)) >= min_sqnr, bits
        assert float(dequantize(c).max()) == pytest.approx(12.0)  # the outlier keeps its value
        again = quantize_kmeans_tensor(w, bits)  # deterministic
        assert torch.equal(again.codes, c.codes)
        assert torch.equal(again.params["codebook"], c.params["codebook"])


def test_one_bit_with_pinned_zero_warns_that_values_collapse():
    w = torch.tensor([-1.0, 1.0, 0.0])
    with pytest.warns(KMeansCollapseWarning, match=r"bits=1 .*pinned at 0\.0.*bits >= 2"):
        c = quantize_kmeans_tensor(w, 1)
    assert torch.equal(dequantize(c), torch.zeros(3))  # the collapse the warning names
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantize_kmeans_tensor(w, 2)  # 3 free entries: exact, no warning
        quantize_kmeans_tensor(torch.tensor([-1.0, 1.0]), 1)  # no zero pinned
        quantize_kmeans_tensor(torch.tensor([0.5, 0.5, 0.0]), 1)  # one value: nothing lost

"""Every technique's entry point checks its model and data first (slimkit.preconditions)."""

import pytest
import torch

import slimkit as sk
from slimkit.distillation import DistillConfig
from slimkit.errors import ConfigError, NumericsError, TargetError
from slimkit.export.onnx import to_onnx
from slimkit.training import TrainConfig

ONE_STEP = TrainConfig(epochs=1, max_batches=1)


@pytest.fixture(scope="module")
def digits():
    return sk.load_dataset("digits", train_samples=128, test_samples=32)


def _lenet300(**kw):
    return sk.build_model("lenet300", image_size=8, seed=0, **kw)


def _nan_model():
    m = _lenet300()
    with torch.no_grad():
        m.fc1.weight[0, 0] = float("nan")
    return m


def test_a_non_module_model_is_a_config_error_not_an_attribute_error(digits):
    for call in (
        lambda: sk.prune_("lenet300", sk.MagnitudePruning(sparsity=0.5)),
        lambda: sk.quantize_(None, sk.LinearQuantization(bits=4)),
        lambda: sk.decompose_({}, sk.SVDDecomposition()),
        lambda: sk.train("lenet300", digits, ONE_STEP),
    ):
        with pytest.raises(ConfigError, match="needs a torch nn.Module as the model"):
            call()


def test_nan_weights_and_a_nan_teacher_are_refused_not_spread(digits, tmp_path):
    # pruning kept NaN, training trained to NaN, and a NaN teacher made the student NaN
    with pytest.raises(NumericsError, match="layer 'fc1' has NaN/inf in its weight"):
        sk.prune_(_nan_model(), sk.MagnitudePruning(sparsity=0.5))
    with pytest.raises(NumericsError, match="layer 'fc1' has NaN/inf"):
        sk.train(_nan_model(), digits, ONE_STEP)
    student = _lenet300()
    cfg = DistillConfig(train=ONE_STEP)
    with pytest.raises(NumericsError, match="the teacher's outputs hold NaN or inf"):
        sk.distill(student, _nan_model(), digits, cfg)
    with pytest.raises(
        ConfigError, match=r"teacher gives outputs of shape \(2, 5\) but the student \(2, 10\)"
    ):
        sk.distill(student, _lenet300(num_classes=5), digits, cfg)
    with pytest.raises(ConfigError, match="the teacher does not take the data's inputs"):
        sk.distill(student, sk.build_model("lenet300"), digits, cfg)
    # export's parity check took max(0.0, nan) = 0.0 and wrote the file
    path = tmp_path / "nan.onnx"
    with pytest.raises(NumericsError, match="NaN/inf"):
        to_onnx(_nan_model(), path, torch.randn(1, 1, 8, 8))
    assert not path.exists()


def test_a_model_for_other_inputs_or_classes_is_refused_before_training(digits):
    wrong_size = sk.build_model("lenet300", image_size=28)
    with pytest.raises(
        ConfigError, match=r"does not take the data's inputs of shape \(1, 1, 8, 8\)"
    ):
        sk.train(wrong_size, digits, ONE_STEP)
    with pytest.raises(ConfigError, match="has 5 outputs, but the data has 10 classes"):
        sk.train(_lenet300(num_classes=5), digits, ONE_STEP)


def test_techniques_refuse_to_undo_quantization(digits):
    # decompose replaced a quantized Linear by float factors and dropped the record; pruning
    # moved k-means weights off their codebook; a second quantizer dropped the int8 layers
    m = sk.quantize_(_lenet300(), sk.LinearQuantization(bits=4))
    with pytest.raises(ConfigError, match="already quantized.*decompose first"):
        sk.decompose_(m, sk.SVDDecomposition())
    k = sk.quantize_(_lenet300(), sk.KMeansQuantization(bits=2))
    with pytest.raises(ConfigError, match="already quantized.*prune first"):
        sk.prune_(k, sk.MagnitudePruning(sparsity=0.5))
    s = sk.quantize_(_lenet300(), sk.StaticInt8(calib_samples=32), data=digits)
    with pytest.raises(ConfigError, match="already holds int8 layers"):
        sk.quantize_(s, sk.LinearQuantization(bits=4))
    d = sk.quantize_(_lenet300(), sk.DynamicInt8())  # was accepted, then exported as dynamic
    with pytest.raises(ConfigError, match=r"already holds int8 layers \['fc1'"):
        sk.quantize_(d, sk.StaticInt8(calib_samples=32), data=digits)


def test_data_for_other_images_is_refused_before_the_model_changes(digits):
    from torch.utils.data import DataLoader, TensorDataset

    for cfg in (sk.StaticInt8(calib_samples=32), sk.QATInt8()):
        m = sk.build_model("lenet5", image_size=28, seed=0)
        before = {n: type(x) for n, x in m.named_modules()}
        # was torch's "mat1 and mat2 shapes cannot be multiplied" after BatchNorm was folded
        # and fake-quant layers swapped in: a retry with the right data was then refused
        with pytest.raises(ConfigError, match=r"quantize_: the model does not take the data's"):
            sk.quantize_(m, cfg, data=digits)
        assert {n: type(x) for n, x in m.named_modules()} == before
    loader = DataLoader(TensorDataset(torch.zeros(4, 1, 8, 8), torch.zeros(4).long()))
    with pytest.raises(ConfigError, match=r"inputs of shape \(1, 1, 8, 8\)"):
        sk.quantize_(sk.build_model("lenet5", image_size=28), sk.StaticInt8(), data=loader)
    with pytest.raises(ConfigError, match=r"prune_: the model does not take the data's"):
        sk.prune_(
            sk.build_model("lenet5", image_size=28), sk.TaylorPruning(sparsity=0.5), data=digits
        )


def test_nothing_to_decompose_and_bad_zoo_sizes_are_errors():
    with pytest.raises(TargetError, match="TuckerDecomposition found no layer to decompose"):
        sk.decompose_(_lenet300(), sk.TuckerDecomposition())
    for kw, message in [
        ({"image_size": 0}, "image_size must be an integer in 4..1024, but got 0"),
        ({"num_classes": 0}, "num_classes must be an integer in 1..100000, but got 0"),
        ({"in_channels": 2.5}, "in_channels must be an integer in 1..64, but got 2.5"),
    ]:
        with pytest.raises(ConfigError, match=message):
            sk.build_model("lenet5", **kw)


def test_auto_compress_with_a_bad_target_writes_nothing(digits, tmp_path):
    from slimkit.search.autocompress import AutoCompressConfig, auto_compress

    out = tmp_path / "auto"
    cfg = AutoCompressConfig(max_bytes=10**6, n_trials=1, targets=("nope",))
    with pytest.raises(TargetError):
        auto_compress(_lenet300(), digits, cfg, out)
    assert not out.exists()


def test_data_training_and_loading_values_are_checked(tmp_path):
    from slimkit.data.datasets import from_tensors

    x, y = torch.randn(8, 1, 8, 8), torch.arange(8) % 4
    for kwargs, message in [
        ({"y_train": y.float() + 0.5}, "whole class indices"),
        ({"y_train": y - 1}, "class indices >= 0, but got -1"),
        ({"x_test": torch.randn(8, 1, 7, 7)}, "the same shape"),
        ({"num_classes": 3}, "above the largest label \\(3\\), but got 3"),
        ({"calib_samples": -1}, "calib_samples must be an integer >= 1"),
    ]:
        args = {"x_train": x, "y_train": y, "x_test": x, "y_test": y, **kwargs}
        with pytest.raises(ConfigError, match=message):
            from_tensors(**args)
    with pytest.raises(ConfigError, match="train_samples must be an integer >= 1"):
        sk.load_dataset("digits", train_samples=-5)
    for kwargs, message in [
        ({"momentum": -1}, "momentum must be in"),
        ({"device": "banana"}, "device must be 'cpu'"),
        ({"seed": "a"}, "seed must be an integer"),
    ]:
        with pytest.raises(ConfigError, match=message):
            TrainConfig(**kwargs)
    with pytest.raises(ConfigError, match="no BatchNorm layer; use ChannelPruning"):
        sk.prune_(sk.build_model("lenet5", image_size=8), sk.NetworkSlimming(ratio=0.5))
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"\x08\x07")
    with pytest.raises(ConfigError, match="is an ONNX file"):
        sk.load(onnx_file)


def test_value_dependent_control_flow_warns_on_export(tmp_path):
    # the traced branch was kept silently; parity feeds only copies of the example
    from slimkit.export.onnx import ControlFlowWarning

    class Branchy(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else -x

    with pytest.warns(ControlFlowWarning, match="always takes the branch the example took"):
        to_onnx(Branchy(), tmp_path / "b.onnx", torch.ones(1, 4))


def test_a_misspelled_keyword_is_refused_not_swallowed(digits):
    with pytest.raises(ConfigError, match="unknown keyword argument dat=; did you mean data="):
        sk.prune_(_lenet300(), sk.MagnitudePruning(sparsity=0.5), dat=digits)


def test_api_arguments_of_the_wrong_kind_are_config_errors(tmp_path):
    from slimkit.pipeline import from_yaml
    from slimkit.search import HPOConfig, NASConfig
    from slimkit.transformers.structural import EncoderStructural

    for call, message in [
        (lambda: NASConfig(sampler_options={"bogus": 1}), r"sampler_options \['bogus'\] are not"),
        (lambda: NASConfig(sampler_options="x"), "sampler_options must be a mapping"),
        (lambda: HPOConfig(dataset="imagenet"), "unknown dataset .imagenet."),
        (lambda: sk.QATInt8(train={"epochs": 0}), "train.epochs must be >= 1"),
        (lambda: EncoderStructural(keep_layers=5), "keep_layers must be a list"),
        (lambda: from_yaml(123), "takes the recipe's YAML text"),
        (lambda: sk.load(None), "load takes a file path"),
        (
            lambda: to_onnx(_lenet300(), tmp_path / "m.onnx", torch.randn(1, 1, 8, 8), opset=5),
            "opset must be an integer in 11..20",
        ),
    ]:
        with pytest.raises(ConfigError, match=message):
            call()


def test_compress_takes_a_recipe_path(tmp_path):
    from pathlib import Path

    from slimkit.pipeline import compress

    recipe = Path(__file__).parents[1] / "examples" / "quick_digits.yaml"
    result = compress(str(recipe), tmp_path / "run", log=lambda _m: None)
    assert (tmp_path / "run" / "model.slim").exists() and result.rows


def test_export_keeps_the_models_mode_and_distill_refuses_itself(digits, tmp_path):
    model = _lenet300().train()
    to_onnx(model, tmp_path / "m.onnx", torch.randn(1, 1, 8, 8))
    assert model.training  # export left the caller's model in eval mode
    with pytest.raises(ConfigError, match="the teacher is the student itself"):
        sk.distill(model, model, digits, DistillConfig(train=ONE_STEP))

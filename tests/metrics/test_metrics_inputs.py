"""The public metrics functions refuse input they cannot measure with a ConfigError."""

import pytest
import torch
from torch import nn

from slimkit.errors import ConfigError
from slimkit.export.onnx import export_bytes
from slimkit.export.ort import make_session
from slimkit.metrics import evaluate, model_fidelity, ort_latency, torch_latency
from slimkit.metrics.accuracy import ort_accuracy
from slimkit.models import build_model

X = torch.randn(1, 1, 8, 8)


@pytest.fixture(scope="module")
def lenet():
    return build_model("lenet300", image_size=8, seed=0)


@pytest.fixture(scope="module")
def lenet_bytes(lenet):
    return export_bytes(lenet, X)


def test_ort_accuracy_of_an_empty_loader_is_refused_as_evaluate_accuracy(lenet_bytes):
    sess = make_session(lenet_bytes, threads=1)
    with pytest.raises(ConfigError, match=r"empty loader \(0 samples\)"):
        ort_accuracy(sess, [])
    batch = (torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]))
    assert 0.0 <= ort_accuracy(sess, [batch]) <= 1.0


@pytest.mark.parametrize("max_batches", [0, -1, 1.5])
def test_model_fidelity_refuses_max_batches_below_one(lenet, max_batches):
    batch = (torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ConfigError, match=rf"max_batches must be None .* but got {max_batches}"):
        model_fidelity(lenet, lenet, [batch], max_batches=max_batches)
    with pytest.raises(ConfigError, match="empty loader"):
        model_fidelity(lenet, lenet, [])
    assert model_fidelity(lenet, lenet, [batch], max_batches=1).cosine_min > 0.999


def test_latency_refuses_batch_zero_and_threads_zero(lenet, lenet_bytes):
    with pytest.raises(ConfigError, match="batch must be a batch size of at least 1, but got 0"):
        torch_latency(lenet, X, 0, runs=1)
    with pytest.raises(ConfigError, match=r"threads must be 1\.\.256, but got 0"):
        torch_latency(lenet, X, 1, threads=0, runs=1)
    with pytest.raises(ConfigError, match="batch must be a batch size of at least 1, but got 0"):
        ort_latency(lenet_bytes, X, 0, runs=1)
    with pytest.raises(ConfigError, match=r"threads must be 1\.\.256, but got 0"):
        ort_latency(lenet_bytes, X, 1, threads=0, runs=1)
    before = torch.get_num_threads()
    assert torch_latency(lenet, X, 2, runs=1).threads == before  # None: torch's current count
    assert ort_latency(lenet_bytes, X, 2, threads=1, runs=1).threads == 1


def test_evaluate_refuses_to_replace_the_users_model_files(lenet, tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"the user's own model")
    with pytest.raises(ConfigError, match=r"already holds model.onnx.*new or empty folder"):
        evaluate(lenet, example_input=X, workdir=tmp_path, batches=(1,), runs=1)
    assert (tmp_path / "model.onnx").read_bytes() == b"the user's own model"
    assert not (tmp_path / "model.safetensors").exists()


def test_evaluate_creates_a_missing_workdir_and_measures_into_it_again(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))  # not a zoo model: weights only
    folder = tmp_path / "new" / "sub"
    m = evaluate(model, example_input=X, workdir=folder, batches=(1,), runs=1)
    assert m.bytes_safetensors == (folder / "model.safetensors").stat().st_size
    assert m.bytes_onnx == (folder / "model.onnx").stat().st_size
    names = [".slimkit-evaluate", "model.onnx", "model.safetensors"]
    assert sorted(p.name for p in folder.iterdir()) == names
    # its own files from an earlier call are replaced (measuring in a loop), no temp left
    evaluate(
        nn.Sequential(nn.Flatten(), nn.Linear(64, 3)),
        example_input=X,
        workdir=folder,
        batches=(1,),
        runs=1,
    )
    assert sorted(p.name for p in folder.iterdir()) == names
    blocker = tmp_path / "afile"
    blocker.write_text("user data")
    with pytest.raises(ConfigError, match="afile' is a file, not a folder"):
        evaluate(model, example_input=X, workdir=blocker / "w", batches=(1,), runs=1)
    assert blocker.read_text() == "user data"


def test_evaluate_refuses_an_example_the_model_does_not_take(lenet):
    with pytest.raises(ConfigError, match=r"evaluate: the model does not take .* \(1, 1, 28, 28\)"):
        evaluate(lenet, example_input=torch.randn(1, 1, 28, 28), batches=(1,), runs=1)


def test_ort_latency_takes_an_example_that_requires_grad(lenet_bytes):
    x = torch.randn(1, 1, 8, 8, requires_grad=True)  # .numpy() refused it outside no_grad
    assert ort_latency(lenet_bytes, x, 1, threads=1, runs=1).runs == 1

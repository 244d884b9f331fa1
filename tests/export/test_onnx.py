import onnx
import pytest
import torch
from torch import nn

from slimkit.errors import ParityError, UnsafeFileError
from slimkit.export import make_session, to_onnx
from slimkit.models import build_model


class _Noisy(nn.Module):
    """Differs between traced and eager runs: ONNX parity must catch it."""

    def forward(self, x):
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return x + 1.0
        return x


def test_export_with_dynamic_batch(tmp_path):
    model = build_model("mobilenetv2", image_size=8)
    res = to_onnx(model, tmp_path / "m.onnx", torch.randn(1, 1, 8, 8))
    assert res.max_abs_diff < 1e-4 and res.bytes == (tmp_path / "m.onnx").stat().st_size
    sess = make_session(tmp_path / "m.onnx")
    out = sess.run(None, {"input": torch.randn(7, 1, 8, 8).numpy()})[0]
    assert out.shape == (7, 10)


def test_parity_failure_reports_the_difference(tmp_path):
    with pytest.raises(ParityError, match=r"max \|diff\| = 1 > tolerance"):
        to_onnx(_Noisy(), tmp_path / "n.onnx", torch.randn(1, 3))
    assert not (tmp_path / "n.onnx").exists()


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd"])
def test_external_data_outside_folder_is_refused(tmp_path, location):
    model = build_model("lenet300", image_size=8)
    to_onnx(model, tmp_path / "m.onnx", torch.randn(1, 1, 8, 8))
    proto = onnx.load(str(tmp_path / "m.onnx"))
    t = proto.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    entry = t.external_data.add()
    entry.key, entry.value = "location", location
    onnx.save(proto, str(tmp_path / "evil.onnx"))
    with pytest.raises(UnsafeFileError, match="outside the model's folder"):
        make_session(tmp_path / "evil.onnx")


def test_external_data_symlink_is_refused(tmp_path):
    from onnx.external_data_helper import convert_model_to_external_data

    model = build_model("lenet300", image_size=8)
    to_onnx(model, tmp_path / "m.onnx", torch.randn(1, 1, 8, 8))
    proto = onnx.load(str(tmp_path / "m.onnx"))
    convert_model_to_external_data(
        proto, all_tensors_to_one_file=True, location="w.bin", size_threshold=0
    )
    onnx.save(proto, str(tmp_path / "ext.onnx"))
    assert make_session(tmp_path / "ext.onnx").run(None, {"input": torch.randn(1, 1, 8, 8).numpy()})
    outside = tmp_path.parent / f"{tmp_path.name}-outside.bin"
    (tmp_path / "w.bin").rename(outside)
    (tmp_path / "w.bin").symlink_to(outside)
    with pytest.raises(UnsafeFileError, match="outside the model's folder"):
        make_session(tmp_path / "ext.onnx")

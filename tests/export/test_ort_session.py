"""make_session's arguments: thread count and optimization level are checked; ONNX bytes may not
point at external data files."""

import onnx
import pytest
import torch

from slimkit.errors import ConfigError, UnsafeFileError
from slimkit.export.onnx import export_bytes
from slimkit.export.ort import make_session
from slimkit.models import build_model


@pytest.fixture(scope="module")
def lenet_bytes():
    return export_bytes(build_model("lenet300", image_size=8, seed=0), torch.randn(1, 1, 8, 8))


@pytest.mark.parametrize("threads", [0, -1, 257, 1.5, True, None])
def test_threads_outside_1_to_256_are_refused(lenet_bytes, threads):
    # ONNX Runtime reads 0 as "its default pool" (every core): a run reported as 0 threads
    with pytest.raises(ConfigError, match=rf"threads must be 1\.\.256, but got {threads!r}"):
        make_session(lenet_bytes, threads=threads)


def test_an_unknown_optimization_lists_the_choices(lenet_bytes):
    with pytest.raises(ConfigError, match=r"\['none', 'basic', 'extended', 'all'\], but got 'al'"):
        make_session(lenet_bytes, optimization="al")
    sess = make_session(lenet_bytes, threads=1, optimization="none")
    assert sess.run(None, {"input": torch.randn(2, 1, 8, 8).numpy()})[0].shape == (2, 10)


def _with_external(data: bytes, location: str) -> bytes:
    proto = onnx.load_from_string(data)
    t = proto.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    entry = t.external_data.add()
    entry.key, entry.value = "location", location
    return proto.SerializeToString()


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "w.bin"])
def test_onnx_bytes_with_external_data_are_refused(lenet_bytes, tmp_path, monkeypatch, location):
    # bytes have no folder: the data file would be looked up from the working folder, where a
    # planted file or symlink could feed any file on the machine in as weights
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.bin").write_bytes(b"\0" * 4 * 300 * 64)
    with pytest.raises(UnsafeFileError, match=rf"ONNX bytes given points .* at {location!r}"):
        make_session(_with_external(lenet_bytes, location))

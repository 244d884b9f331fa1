"""Save and load models as safetensors + a JSON manifest in the safetensors header.

Nothing here runs code from a file: safetensors and ``.slim`` files are plain data (tensors and
the JSON of :func:`slimkit.models.spec.describe`). User torch files (``.pt``/``.pth``/``.bin``/
``.ckpt``) are unpickled, but only by ``torch.load(weights_only=True)``, with no fallback.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from slimkit import atomic
from slimkit.errors import ConfigError, NumericsError, SlimkitError, UnsafeFileError
from slimkit.models import spec as model_spec

FORMAT = "slimkit-weights"
FORMAT_VERSION = "1"


def state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as contiguous CPU tensors with no shared storage."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


# Suffixes of other formats: save wrote safetensors under them, so `--out q.slim` gave a float
# file named like a packed artifact, and `.onnx`/`.pt` files that load then refused.
_OTHER_FORMATS = {
    ".slim": "the packed .slim artifact is written by slimkit.export.slimformat.save, or a "
    "recipe's export stage with formats: [slim]",
    ".onnx": "ONNX comes from `slimkit export` / slimkit.export.onnx.to_onnx",
    ".pt": "slimkit never writes pickles",
    ".pth": "slimkit never writes pickles",
    ".bin": "slimkit never writes pickles",
    ".ckpt": "slimkit never writes pickles",
    ".pkl": "slimkit never writes pickles",
}


def check_save_suffix(path: str | os.PathLike[str]) -> None:
    """Refuse a model-file name whose suffix promises another format (a ConfigError with it)."""
    suffix = Path(path).suffix.lower()
    if suffix in _OTHER_FORMATS:
        raise ConfigError(
            f"a slimkit model file is safetensors, but {str(path)!r} names a {suffix} file "
            f"({_OTHER_FORMATS[suffix]}); name it {Path(path).stem}.safetensors"
        )


def save(
    model: nn.Module,
    path: str | os.PathLike[str],
    meta: dict[str, Any] | None = None,
    *,
    allow_nonfinite: bool = False,
) -> int:
    """Write ``model`` to ``path`` (safetensors) atomically; return the bytes written.

    A model with NaN/inf weights is refused (``load`` would refuse the file) unless
    ``allow_nonfinite``."""
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"save needs a torch nn.Module, but got {type(model).__name__}; for a plain dict of "
            "tensors use safetensors.torch.save_file"
        )
    if meta is not None and not isinstance(meta, dict):
        raise ConfigError(f"meta must be a dict of JSON values, but got {type(meta).__name__}")
    check_save_suffix(path)
    # One metadata key: safetensors writes its metadata map in hash order, so several keys
    # would make two saves of the same model differ byte for byte.
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "spec": model_spec.describe(model),
        "meta": meta or {},
    }
    tensors = state_tensors(model)
    if not allow_nonfinite:
        check_finite(tensors, str(path), saving=True)
    try:
        text = json.dumps(manifest, sort_keys=True)
    except TypeError as exc:
        raise ConfigError(
            f"meta must hold only JSON values (str, number, list, dict): {exc}"
        ) from None
    data = st_save(tensors, metadata={"slimkit": text})
    atomic.write_bytes(path, data)
    return len(data)


def read_safetensors(
    path: str | os.PathLike[str],
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read tensors and header metadata of a safetensors file (no code runs)."""
    raw = Path(path).read_bytes()
    try:
        tensors = st_load(raw)
    except Exception as exc:
        raise UnsafeFileError(f"{path} is not a valid safetensors file: {exc}") from None
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    return tensors, header.get("__metadata__", {}) or {}


def check_finite(tensors: dict[str, torch.Tensor], source: str, saving: bool = False) -> None:
    """NaN/inf in a model file is refused: on load, and on save (load would refuse the file)."""
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            fix = (
                "load would refuse the file; nothing was written. Train it again, or pass "
                "allow_nonfinite=True to save it anyway"
                if saving
                else "refusing to load it. Train or export it again; to load it anyway for "
                "inspection, use slimkit.load(path, allow_nonfinite=True) in Python"
            )
            raise NumericsError(
                f"{source}: tensor {name!r} holds NaN or inf, so the model's outputs would too "
                f"(did its training diverge?); {fix}"
            )


TORCH_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".ckpt"})


def _pickle_kind(magic: bytes) -> str | None:
    """What a file's first bytes say it is, if torch.save / pickle wrote it; else None."""
    if magic[:2] == b"PK":
        return "zip archive (torch.save)"
    if magic[:1] == b"\x80" and magic[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return f"pickle (protocol {magic[1]}, legacy torch.save)"
    return None


def load(
    path: str | os.PathLike[str], model: nn.Module | None = None, *, allow_nonfinite: bool = False
) -> nn.Module:
    """Load a model saved by :func:`save` (or a ``.slim`` artifact); never runs code from the file.

    A model built from the file has each float parameter and buffer in the dtype it was saved
    in (float64, bf16, ...). With ``model`` given, only the weights are loaded into it (strict,
    converted to its dtypes, as ``load_state_dict`` does). A torch state dict
    (``.pt``/``.pth``/``.bin``/``.ckpt``) needs ``model``; it is read only with
    ``torch.load(weights_only=True)``, and only once ``model`` is given.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"load takes a file path, but got {type(path).__name__}")
    if model is not None and not isinstance(model, nn.Module):
        raise ConfigError(
            f"model= must be an nn.Module to load the weights into, but got {type(model).__name__}"
        )
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"no such file: {path}")
    if not path.is_file():
        raise ConfigError(f"{path} is a folder, not a model file; name the file inside it")
    with open(path, "rb") as fh:
        magic = fh.read(8)
    from slimkit.export import slimformat

    if magic.startswith(slimformat.MAGIC):
        return slimformat.load(path, allow_nonfinite=allow_nonfinite)
    if path.suffix.lower() == ".onnx":
        raise ConfigError(
            f"{path} is an ONNX file; slimkit.load reads slimkit model files (.safetensors, "
            ".slim) and torch state dicts (.pt). Run an ONNX model with onnxruntime, or pass it "
            "as a distillation teacher (--teacher model.onnx)"
        )
    pickled = _pickle_kind(magic)
    if path.suffix.lower() == ".safetensors" and pickled is not None:
        # torch.load itself hands any path ending in .safetensors to safetensors, and the name
        # promises no pickle: refuse it here rather than guess.
        raise UnsafeFileError(
            f"{path} is not a safetensors file: its bytes are a {pickled}, which slimkit never "
            "unpickles under a .safetensors name; re-save the weights with slimkit.save(model, "
            "path) or safetensors.torch.save_file(model.state_dict(), path)"
        )
    if path.suffix.lower() in TORCH_SUFFIXES or magic[:2] in (b"PK", b"\x80\x02"):
        if model is None:  # refused before torch.load: nothing is unpickled for a refusal
            raise ConfigError(_weights_only_error(path, "is a torch.save file"))
        state = load_torch_state(path)
        if not allow_nonfinite:
            check_finite(state, str(path))
        _load_state(model, state, path)
        return model
    try:
        shapes, dtypes, header = _read_header(path)
    except UnsafeFileError:
        if path.suffix.lower() != ".slim":
            raise
        raise UnsafeFileError(
            f"{path} is not a .slim artifact: it does not start with the magic bytes "
            f"{slimformat.MAGIC!r} (it starts with {magic!r}) and is not a safetensors file "
            "either; the file is corrupt or of another kind: export the model to .slim again"
        ) from None
    if model is None:
        # Checked before any tensor is read; built in the stored float dtypes (a float64 model
        # loaded into float32 parameters came back rounded).
        model = _build_from_header(path, header, shapes, dtypes)
    tensors, _ = read_safetensors(path)
    if not allow_nonfinite:
        check_finite(tensors, str(path))
    _load_state(model, tensors, path)
    from slimkit.pruning.masks import attach_masks

    # Masks come back as buffers; without their forward hooks a loaded masked model trained
    # (and ran) dense while its masks still said pruned.
    attach_masks(model)
    return model.eval()


def _weights_only_error(path: Path, what: str) -> str:
    """The refusal of a weights-only file with ``model=None``. The CLI shows it too, and a
    command line has no ``model=``, so it names both fixes."""
    return (
        f"{path} {what}: slimkit reads only weights from it, not the architecture, so it cannot "
        "build the model. In Python, pass model=... (the model the weights came from): "
        "slimkit.load(path, model=net). The slimkit command reads only files that carry their "
        "architecture (.safetensors written by slimkit.save, or .slim): convert it once in "
        "Python, e.g. for a zoo model m = slimkit.load(path, model=slimkit.build_model(NAME)); "
        "slimkit.save(m, 'model.safetensors')"
    )


def _build_from_header(
    path: Path,
    header: dict[str, str],
    shapes: dict[str, list[int]],
    dtypes: dict[str, torch.dtype],
) -> nn.Module:
    """Build the manifest's model, its spec checked on the meta device against ``shapes``."""
    try:
        manifest = read_manifest(header)
    except SlimkitError as exc:
        raise type(exc)(f"{path}: {exc}") from None
    if manifest is None:
        raise ConfigError(_weights_only_error(path, "has no slimkit manifest"))
    try:
        return model_spec.build(manifest["spec"], shapes=shapes, dtypes=dtypes)
    except Exception as exc:  # a hand-edited manifest; spec's ConfigErrors name the layer
        reason = str(exc) if isinstance(exc, SlimkitError) else f"{type(exc).__name__}: {exc}"
        raise ConfigError(
            f"{path}: its slimkit manifest does not describe a model slimkit can build: {reason}"
            + ("" if isinstance(exc, SlimkitError) else "; re-save the model with slimkit.save")
        ) from None


def _load_state(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:  # missing / unexpected keys, shape mismatches
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = "; ".join(lines[1:4]) or str(exc)[:300]
        raise ConfigError(
            f"{path}: its tensors must match the model's state dict, but they do not ({detail}); "
            "pass the model the weights were saved from"
        ) from None


def read_safetensors_header(
    path: str | os.PathLike[str],
) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Tensor shapes and header metadata of a safetensors file, without reading the tensors."""
    shapes, _, metadata = _read_header(path)
    return shapes, metadata


# safetensors' names of the float dtypes a slimkit model holds (others: see restore_dtypes).
_FLOAT_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}


def _read_header(
    path: str | os.PathLike[str],
) -> tuple[dict[str, list[int]], dict[str, torch.dtype], dict[str, str]]:
    """Shapes, float dtypes (by tensor name) and header metadata, without reading the tensors."""
    try:
        with safe_open(str(path), framework="pt") as f:
            slices = {k: f.get_slice(k) for k in f.keys()}
            shapes = {k: list(s.get_shape()) for k, s in slices.items()}
            kinds = {k: s.get_dtype() for k, s in slices.items()}
            metadata = f.metadata() or {}
    except Exception as exc:  # SafetensorError, OSError: not a safetensors file
        raise UnsafeFileError(f"{path} is not a valid safetensors file: {exc}") from None
    dtypes = {k: _FLOAT_DTYPES[d] for k, d in kinds.items() if d in _FLOAT_DTYPES}
    return shapes, dtypes, metadata


def read_manifest(header: dict[str, str]) -> dict[str, Any] | None:
    """The slimkit manifest stored in a safetensors header, or None."""
    try:
        manifest = json.loads(header["slimkit"])
    except (KeyError, ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return None
    if manifest.get("version") != FORMAT_VERSION:
        raise ConfigError(
            f"file format version {manifest.get('version')!r} is not supported by this slimkit "
            f"(supports {FORMAT_VERSION!r}); upgrade slimkit"
        )
    return manifest


def _torch_reason(exc: BaseException) -> str:
    """The line of a torch.load error that says what was refused (not torch's advice)."""
    if isinstance(exc, EOFError):
        return "the file ends early"
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    line = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), None)
    if line is None:
        line = lines[0] if lines else "no message"
    line = line.removeprefix("WeightsUnpickler error: ").split(". ")[0].rstrip(".")
    return line[:200]


def _refuse_compressed_zip(path: str | os.PathLike[str]) -> None:
    """torch.save stores zip records uncompressed, but torch.load inflates deflated ones: a
    390 KB hand-made file held a 400 MB tensor. Refuse compressed records before torch reads."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return  # not a zip (a legacy pickle) or a broken one: torch.load reports it
    packed = [i for i in infos if i.compress_type != zipfile.ZIP_STORED]
    if packed:
        big = max(packed, key=lambda i: i.file_size)
        raise UnsafeFileError(
            f"{path} holds {len(packed)} compressed zip record(s) (e.g. {big.filename!r}: "
            f"{big.file_size:,} bytes from {big.compress_size:,}); torch.save never compresses "
            "them and slimkit refuses them so a small file cannot inflate to gigabytes. Re-save "
            "the weights with torch.save(model.state_dict()) or safetensors"
        )


def load_torch_state(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a user ``.pt`` state dict with ``torch.load(weights_only=True)``; no fallback."""
    _refuse_compressed_zip(path)
    try:
        # A file object, not the path: torch.load hands a path ending in .safetensors to
        # safetensors, and this function only reads torch.save files.
        with open(path, "rb") as fh:
            obj = torch.load(fh, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeFileError(
            f"{path} cannot be loaded safely: it needs full unpickling, which can run arbitrary "
            f"code ({_torch_reason(exc)}). slimkit only loads plain tensor state dicts "
            "(torch.load(weights_only=True)); re-save the weights with safetensors or "
            "torch.save(model.state_dict())"
        ) from None
    except Exception as exc:  # a truncated or corrupt file: EOFError, zip or decode errors
        raise UnsafeFileError(
            f"{path} is not a readable torch.save file ({type(exc).__name__}: "
            f"{_torch_reason(exc)}); it may be truncated or corrupt. Re-save the weights with "
            "safetensors or torch.save(model.state_dict())"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UnsafeFileError(f"{path} does not hold a state dict of tensors")
    for name, t in obj.items():
        # weights_only also rebuilds sparse tensors without checking their indices (a sparse
        # tensor's invariants are not validated by default), quantized, nested and meta tensors;
        # a state dict is plain dense CPU tensors, and nothing else reaches a torch kernel.
        if not isinstance(name, str) or not _plain_tensor(t):
            raise UnsafeFileError(
                f"{path}: entry {name!r} is a {_tensor_kind(t)} tensor; slimkit loads only plain "
                "dense CPU tensors keyed by name. Re-save the weights as "
                "{name: tensor.to_dense().cpu()} with safetensors or torch.save"
            )
    return obj


def _plain_tensor(t: torch.Tensor) -> bool:
    return (
        type(t) in (torch.Tensor, nn.Parameter)
        and t.layout == torch.strided
        and t.device.type == "cpu"
        and not t.is_quantized
        and not t.is_nested
    )


def _tensor_kind(t: torch.Tensor) -> str:
    if t.layout != torch.strided:
        return str(t.layout).removeprefix("torch.")
    if t.is_quantized:
        return "quantized"
    if t.is_nested:
        return "nested"
    if t.device.type != "cpu":
        return f"{t.device.type}-device"
    return type(t).__name__

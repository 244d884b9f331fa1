"""The ``.slim`` artifact: one file holding a pruned + quantized model in compressed form.

Layout (documented in docs/slim-format.md; all integers little-endian)::

    MAGIC (8 bytes, b"SLIMKIT\\0") | u32 format version | u8 manifest coding | u32 manifest length
    manifest (JSON, entropy coded) | payload (the streams, back to back)

The manifest holds the model spec (:func:`slimkit.models.spec.describe`) and one record per
state-dict tensor, in state-dict order. A tensor is stored as one of

- ``quant``: a weight-quantized layer's integer codes (:func:`slimkit.quantization.codes.
  weight_codes`); its scale / zero point / codebook are the layer's own buffers, stored as
  ``dense`` tensors and referenced by name;
- ``palette``: a float tensor with at most 256 distinct values (a weight on any grid) as a sorted
  fp32 value table plus codes into it;
- ``dense``: the exact bytes of the tensor (fp32 stays fp32, so ``load`` is bit-exact).

Any of them can be ``sparse``: only the nonzero positions are stored, located by relative indices
(gaps between successive nonzeros; a gap symbol equal to ``2**index_bits - 1`` means "skip that
many, no value", as in Deep Compression). Integer symbol streams (codes, gaps) are stored
bit-packed (:func:`slimkit.quantization.packing.pack`) or one byte per symbol, and every stream
then goes through the entropy stage (:mod:`slimkit.export.entropy`: raw / Huffman / lzma, the
smallest wins). The writer tries the variants and keeps the smallest; nothing in the file
depends on time or dict order, so the same model gives the same bytes.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit import atomic
from slimkit.errors import ConfigError, NumericsError, UnsafeFileError
from slimkit.export import entropy
from slimkit.models import spec as model_spec
from slimkit.quantization.packing import pack, unpack

MAGIC = b"SLIMKIT\x00"
FORMAT = "slimkit-slim"
FORMAT_VERSION = 1
_HEAD = struct.Struct("<IBI")  # version, manifest coding, manifest length
_INDEX_BITS = (4, 8)
_DTYPES = {
    "float32": (torch.float32, np.float32),
    "float16": (torch.float16, np.float16),
    "bfloat16": (torch.bfloat16, None),
    "float64": (torch.float64, np.float64),
    "int64": (torch.int64, np.int64),
    "int32": (torch.int32, np.int32),
    "int16": (torch.int16, np.int16),
    "int8": (torch.int8, np.int8),
    "uint8": (torch.uint8, np.uint8),
    "bool": (torch.bool, np.bool_),
}


# ---- writing ------------------------------------------------------------------------------


_CACHE: dict[bytes, tuple[int, bytes]] = {}


def _coded(raw: bytes) -> tuple[int, bytes]:
    """entropy.encode, memoised during one save (the writer tries variants of each stream)."""
    if raw not in _CACHE:
        _CACHE[raw] = entropy.encode(raw)
    return _CACHE[raw]


class _Payload:
    """Collects entropy-coded streams and their manifest records."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.offset = 0

    def add(self, raw: bytes, **record: Any) -> dict[str, Any]:
        method, coded = _coded(raw)
        rec = {
            "offset": self.offset,
            "length": len(coded),
            "coding": entropy.METHOD_NAMES[method],
            "raw_length": len(raw),
            **record,
        }
        self.chunks.append(coded)
        self.offset += len(coded)
        return rec


def _symbol_candidates(symbols: np.ndarray, bits: int) -> list[tuple[int, bytes, dict[str, Any]]]:
    """Ways to lay out integer symbols: bit-packed, or one byte each (bits <= 8)."""
    out = []
    packed = pack(symbols, bits)
    out.append((len(_coded(packed)[1]), packed, {"layout": "packed"}))
    if bits < 8:
        as_bytes = symbols.astype(np.uint8).tobytes()
        out.append((len(_coded(as_bytes)[1]), as_bytes, {"layout": "bytes"}))
    return out


def _add_symbols(payload: _Payload, symbols: np.ndarray, bits: int) -> dict[str, Any]:
    size, raw, layout = min(_symbol_candidates(symbols, bits), key=lambda c: c[0])
    return payload.add(raw, bits=bits, count=int(symbols.size), **layout)


def _gaps(positions: np.ndarray, index_bits: int) -> np.ndarray:
    """Relative indices of ascending ``positions``; symbol ``2**b - 1`` = skip without a value."""
    esc = (1 << index_bits) - 1
    gaps = np.diff(positions, prepend=-1) - 1  # zeros skipped before each stored value
    # Each gap g becomes g // esc escapes followed by g % esc.
    n_esc = gaps // esc
    out = np.full(int(n_esc.sum() + len(gaps)), esc, dtype=np.int64)
    ends = np.cumsum(n_esc + 1) - 1  # index of each value-carrying symbol
    out[ends] = gaps % esc
    return out


def _positions(gaps: np.ndarray, index_bits: int) -> np.ndarray:
    esc = (1 << index_bits) - 1
    is_value = gaps != esc
    # Every symbol advances by its value; value symbols also occupy one position.
    step = gaps.astype(np.int64) + is_value
    return (np.cumsum(step) - 1)[is_value]


def _sparse_index(flat_nonzero: np.ndarray) -> tuple[int, int]:
    """Pick the index width whose coded gap stream is smallest: (bits, size)."""
    best = None
    for b in _INDEX_BITS:
        g = _gaps(flat_nonzero, b)
        size = min(c[0] for c in _symbol_candidates(g, b))
        if best is None or size < best[1]:
            best = (b, size)
    assert best is not None
    return best


def _values_record(payload: _Payload, kind: str, values: np.ndarray, bits: int | None) -> dict:
    if kind == "dense":
        return payload.add(values.tobytes())
    assert bits is not None
    return _add_symbols(payload, values, bits)


def _encode_tensor(
    name: str,
    t: torch.Tensor,
    codes: np.ndarray | None,
    bits: int | None,
    payload: _Payload,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Store ``codes`` (quant/palette) or the raw tensor, sparse when that is smaller."""
    dtype = str(t.dtype).removeprefix("torch.")
    rec: dict[str, Any] = {"name": name, "dtype": dtype, "shape": list(t.shape), **extra}
    flat = t.reshape(-1)
    if codes is None:
        arr = flat.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else flat.numpy()
        values, kind = arr, "dense"
    else:
        values, kind = codes.reshape(-1), "symbols"
    nz = (
        np.nonzero((flat != 0).numpy())[0] if (t.is_floating_point() and flat.numel() > 0) else None
    )
    if nz is not None and len(nz) < flat.numel() // 2:
        index_bits, _ = _sparse_index(nz)
        trial = _Payload()
        dense_size = _values_record(trial, kind, values, bits)["length"]
        sparse_size = (
            _values_record(trial, kind, values[nz], bits)["length"]
            + _add_symbols(trial, _gaps(nz, index_bits), index_bits)["length"]
        )
        if sparse_size < dense_size:
            rec["sparse"] = {
                "nonzeros": int(len(nz)),
                "index_bits": index_bits,
                "index": _add_symbols(payload, _gaps(nz, index_bits), index_bits),
            }
            rec["values"] = _values_record(payload, kind, values[nz], bits)
            return rec
    rec["values"] = _values_record(payload, kind, values, bits)
    return rec


def _buffer_name(module: nn.Module, prefix: str, tensor: torch.Tensor) -> str | None:
    for bname, buf in module.named_buffers(recurse=False):
        if buf is not None and buf.shape == tensor.shape and torch.equal(buf.cpu(), tensor):
            return f"{prefix}{bname}"
    return None


def _quant_record(model: nn.Module, layer: str, module: nn.Module, t: torch.Tensor):
    """Codes and manifest fields of a weight-quantized layer, or None to fall back."""
    from slimkit.quantization.codes import dequantize, weight_codes

    try:
        qc = weight_codes(module, "weight")
    except (ConfigError, NumericsError):
        return None
    prefix = f"{layer}." if layer else ""
    params = {k: _buffer_name(module, prefix, v) for k, v in qc.params.items()}
    if any(v is None for v in params.values()) or not torch.equal(dequantize(qc), t):
        return None
    codes = qc.codes.numpy().astype(np.int64)
    return codes, qc.bits, {"encoding": "quant", "info": qc.info, "params": params}


def _palette_record(t: torch.Tensor):
    """A float tensor on a grid of <= 256 values: sorted value table + codes into it."""
    if not t.is_floating_point() or t.numel() < 256:
        return None
    values = torch.unique(t.reshape(-1).float())
    if values.numel() > 256 or not torch.equal(values.to(t.dtype).float(), values):
        return None
    codes = torch.bucketize(t.reshape(-1).float(), values).reshape(t.shape).numpy().astype(np.int64)
    bits = max(1, int(np.ceil(np.log2(max(2, values.numel())))))
    return codes, bits, {"encoding": "palette", "table": values.numpy().astype(np.float32)}


def encode(model: nn.Module) -> bytes:
    """The ``.slim`` bytes of ``model`` (zoo-built, see :mod:`slimkit.models.spec`)."""
    from slimkit.io import state_tensors

    spec = model_spec.describe(model)
    modules = dict(model.named_modules())
    payload = _Payload()
    records = []
    _CACHE.clear()
    for name, t in state_tensors(model).items():
        layer, _, leaf = name.rpartition(".")
        module = modules.get(layer)
        found = None
        if leaf == "weight" and module is not None and getattr(module, "slimkit_quant", None):
            found = _quant_record(model, layer, module, t)
        if found is None:
            found = _palette_record(t)
        if found is None:
            records.append(_encode_tensor(name, t, None, None, payload, {"encoding": "dense"}))
            continue
        codes, bits, extra = found
        if "table" in extra:
            extra["table"] = payload.add(extra["table"].tobytes())
        records.append(_encode_tensor(name, t, codes, bits, payload, extra))
    _CACHE.clear()
    manifest = {"format": FORMAT, "version": FORMAT_VERSION, "spec": spec, "tensors": records}
    raw = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    method, coded = entropy.encode(raw)
    return MAGIC + _HEAD.pack(FORMAT_VERSION, method, len(coded)) + coded + b"".join(payload.chunks)


def save(model: nn.Module, path: str | os.PathLike[str]) -> int:
    """Write ``model`` as a ``.slim`` artifact atomically; return the bytes written."""
    data = encode(model)
    atomic.write_bytes(path, data)
    return len(data)


# ---- reading ------------------------------------------------------------------------------


def read_manifest(data: bytes) -> tuple[dict[str, Any], int]:
    """``(manifest, payload_start)`` of ``.slim`` bytes; refuses anything malformed."""
    if not data.startswith(MAGIC):
        raise UnsafeFileError("not a .slim artifact (bad magic bytes)")
    try:
        version, method, n = _HEAD.unpack_from(data, len(MAGIC))
    except struct.error:
        raise UnsafeFileError(".slim artifact is truncated inside its header") from None
    if version != FORMAT_VERSION:
        raise UnsafeFileError(
            f".slim format version {version} is not supported (this slimkit reads version "
            f"{FORMAT_VERSION}); upgrade slimkit or re-export the model"
        )
    start = len(MAGIC) + _HEAD.size
    try:
        manifest = json.loads(entropy.decode(method, data[start : start + n]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UnsafeFileError(f".slim manifest is not valid JSON: {exc}") from None
    return manifest, start + n


def _stream(data: bytes, base: int, rec: dict[str, Any]) -> bytes:
    lo = base + int(rec["offset"])
    blob = data[lo : lo + int(rec["length"])]
    if len(blob) != int(rec["length"]):
        raise UnsafeFileError(".slim artifact is truncated: a stream runs past the end of the file")
    methods = {v: k for k, v in entropy.METHOD_NAMES.items()}
    raw = entropy.decode(methods.get(rec["coding"], -1), blob)
    if len(raw) != int(rec["raw_length"]):
        raise UnsafeFileError(".slim stream decoded to the wrong length; the file is corrupt")
    return raw


def _symbols(data: bytes, base: int, rec: dict[str, Any]) -> np.ndarray:
    raw = _stream(data, base, rec)
    if rec["layout"] == "bytes":
        return np.frombuffer(raw, dtype=np.uint8).astype(np.int64)
    return unpack(raw, int(rec["bits"]), int(rec["count"])).astype(np.int64)


def _decode_tensor(
    data: bytes, base: int, rec: dict[str, Any], done: dict[str, torch.Tensor]
) -> torch.Tensor:
    tdtype, npdtype = _DTYPES[rec["dtype"]]
    shape = tuple(rec["shape"])
    numel = int(np.prod(shape)) if shape else 1
    enc = rec["encoding"]
    if enc == "dense":
        raw = _stream(data, base, rec["values"])
        if rec["dtype"] == "bfloat16":
            values = torch.from_numpy(np.frombuffer(raw, dtype=np.int16).copy()).view(
                torch.bfloat16
            )
        else:
            values = torch.from_numpy(np.frombuffer(raw, dtype=npdtype).copy())
    else:
        values = torch.from_numpy(_symbols(data, base, rec["values"]))
    sparse = rec.get("sparse")
    if sparse:
        pos = torch.from_numpy(
            _positions(_symbols(data, base, sparse["index"]), int(sparse["index_bits"]))
        )
        full = torch.zeros(numel, dtype=values.dtype)
        full[pos] = values
        values = full
    if enc == "dense":
        return values.reshape(shape).to(tdtype)
    codes = values.reshape(shape)
    if enc == "palette":
        table = torch.from_numpy(
            np.frombuffer(_stream(data, base, rec["table"]), np.float32).copy()
        )
        out = table[codes]
    elif enc == "quant":
        from slimkit.quantization.codes import QuantCodes, dequantize

        params = {k: done[v] for k, v in rec["params"].items()}
        out = dequantize(
            QuantCodes(codes.to(torch.int32), int(rec["values"]["bits"]), params, dict(rec["info"]))
        )
    else:
        raise UnsafeFileError(f"unknown tensor encoding {enc!r} in .slim manifest")
    if sparse:
        # Pruned positions are exactly zero whatever code sat there.
        mask = torch.zeros(numel, dtype=torch.bool)
        mask[pos] = True
        out = torch.where(mask.reshape(shape), out, torch.zeros((), dtype=out.dtype))
    return out.to(tdtype)


def decode_state(data: bytes) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(manifest, state_dict)`` of ``.slim`` bytes."""
    manifest, base = read_manifest(data)
    records = manifest["tensors"]
    done: dict[str, torch.Tensor] = {}
    # Dense tensors first: quantized weights reference their scale/codebook buffers by name.
    for rec in sorted(records, key=lambda r: r["encoding"] != "dense"):
        try:
            done[rec["name"]] = _decode_tensor(data, base, rec, done)
        except (KeyError, ValueError, IndexError, RuntimeError) as exc:
            raise UnsafeFileError(f".slim tensor {rec.get('name')!r} is corrupt: {exc}") from None
    return manifest, {r["name"]: done[r["name"]] for r in records}


def load(path: str | os.PathLike[str], *, allow_nonfinite: bool = False) -> nn.Module:
    """Rebuild the module saved in a ``.slim`` artifact (weights bit-exact, eval mode)."""
    from slimkit.io import check_finite

    manifest, state = decode_state(Path(path).read_bytes())
    if not allow_nonfinite:
        check_finite(state, str(path))
    model = model_spec.build(manifest["spec"])
    model.load_state_dict(state, strict=True)
    return model.eval()


def stats(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Per-tensor sizes and bits per weight of a ``.slim`` artifact (for reports)."""
    data = Path(path).read_bytes()
    manifest, base = read_manifest(data)
    rows = []
    for rec in manifest["tensors"]:
        streams = {"values": rec["values"]}
        if rec.get("sparse"):
            streams["index"] = rec["sparse"]["index"]
        if isinstance(rec.get("table"), dict):
            streams["table"] = rec["table"]
        numel = int(np.prod(rec["shape"])) if rec["shape"] else 1
        coded = sum(int(s["length"]) for s in streams.values())
        raw = sum(int(s["raw_length"]) for s in streams.values())
        rows.append(
            {
                "name": rec["name"],
                "encoding": rec["encoding"],
                "numel": numel,
                "nonzeros": rec["sparse"]["nonzeros"] if rec.get("sparse") else None,
                "bits": rec["values"].get("bits"),
                "bytes": coded,
                "bytes_before_entropy": raw,
                "bits_per_weight": 8 * coded / max(1, numel),
                "streams": {
                    k: {
                        "bytes": s["length"],
                        "raw_bytes": s["raw_length"],
                        "coding": s["coding"],
                        "layout": s.get("layout"),
                    }
                    for k, s in streams.items()
                },
            }
        )
    params = sum(r["numel"] for r in rows)
    return {
        "format_version": manifest["version"],
        "file_bytes": len(data),
        "manifest_bytes": base - len(MAGIC) - _HEAD.size,
        "header_bytes": len(MAGIC) + _HEAD.size,
        "tensors": rows,
        "numel": params,
        "bits_per_weight": 8 * len(data) / max(1, params),
    }

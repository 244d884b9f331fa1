"""The ``.slim`` artifact: one file holding a pruned + quantized model in compressed form.

Layout (documented in docs/slim-format.md; all integers little-endian)::

    MAGIC (8 bytes, b"SLIMKIT\\0") | u32 format version | u8 manifest coding | u32 manifest length
    manifest (JSON, entropy coded) | payload (the streams, back to back)

The manifest holds the model spec (:func:`slimkit.models.spec.describe`) and one record per
state-dict tensor, in state-dict order. A tensor is stored as one of

- ``quant``: a weight-quantized layer's integer codes (:func:`slimkit.quantization.codes.
  weight_codes`); its scale / zero point / codebook are the layer's own buffers, stored as
  ``dense`` tensors and referenced by name. A layer recorded as quantized whose weight left its
  grid (trained or edited afterwards) is refused with an error, never stored as float;
- ``palette``: a float tensor of at least 256 elements with at most 256 distinct values (a weight
  on any grid) as a sorted fp32 value table plus codes into it, when that table holds every value
  exactly (a float64 tensor off the fp32 grid stays ``dense``);
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
import math
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit import atomic
from slimkit.errors import ConfigError, NumericsError, SlimkitError, UnsafeFileError
from slimkit.export import entropy
from slimkit.models import spec as model_spec
from slimkit.quantization.packing import pack, packed_nbytes, unpack

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


def _quant_record(layer: str, module: nn.Module, t: torch.Tensor, fix: str):
    """Codes and manifest fields of a layer recorded as weight-quantized.

    The record promises integer codes, so a weight that cannot be stored as them is refused
    (never silently stored as float: the file would be larger than the user was told).
    """
    from slimkit.quantization.codes import dequantize, quant_info, weight_codes

    info = quant_info(module, "weight") or {}
    what = f"{info.get('bits')}-bit {info.get('scheme')}"
    try:
        qc = weight_codes(module, "weight")
    except NumericsError:
        raise _off_grid_error(layer, module, info, fix) from None
    except ConfigError as exc:
        raise ConfigError(
            f"cannot encode the .slim artifact: layer {layer!r} is recorded as {what} quantized, "
            f"but its integer codes cannot be recovered ({exc}); {fix}"
        ) from None
    prefix = f"{layer}." if layer else ""
    params = {k: _buffer_name(module, prefix, v) for k, v in qc.params.items()}
    missing = sorted(f"weight_{k}" for k, v in params.items() if v is None)
    if missing:
        raise ConfigError(
            f"cannot encode the .slim artifact: layer {layer!r} is recorded as {what} quantized, "
            f"but {missing} are not registered buffers of it, so the file cannot store them; "
            f"{fix}"
        )
    if not torch.equal(dequantize(qc), t):
        raise NumericsError(
            f"cannot encode the .slim artifact: the state-dict weight of layer {layer!r} differs "
            f"from the layer's own {what} quantized weight; {fix}"
        )
    codes = qc.codes.numpy().astype(np.int64)
    return codes, qc.bits, {"encoding": "quant", "info": qc.info, "params": params}


def _fix(layer: str, module: nn.Module, dynamic: bool) -> str:
    """The fix for a quantized layer whose weight is not on its recorded grid. ``dynamic``: the
    layer is one of DynamicInt8's (recorded on the model too, and quantize_ refuses int8)."""
    record = getattr(module, "slimkit_quant", None) or {}
    if dynamic:
        return (
            "sk.quantize_ refuses an int8 model, so apply DynamicInt8 again to the float model "
            "(after training or editing it), not to this one"
        )
    if "int8" in record:  # fake-quant int8 layer (static PTQ / QAT)
        redo = "snap it back with slimkit.quantization.qat.finish_qat(model)"
    else:
        redo = "re-run sk.quantize_ on the model after training or editing it"
    # An emptied record still marks the layer as quantized (preconditions.quantized_layers).
    record_ref = f"model.get_submodule({layer!r}).slimkit_quant"
    drop = f"del {record_ref}" if set(record) <= {"weight"} else f"del {record_ref}['weight']"
    return f"{redo}, or, to store the layer as float on purpose, remove its record: {drop}"


def _off_grid_error(layer: str, module: nn.Module, info: dict[str, Any], fix: str) -> NumericsError:
    from slimkit.quantization.codes import dequantize, nearest_codes

    weight = module.weight
    assert isinstance(weight, torch.Tensor)  # weight_codes read it as one
    w = weight.detach().cpu().float()
    finite = torch.isfinite(w)
    bad = [f"{int((~finite).sum())} are NaN/inf"] if not finite.all() else []
    try:
        near = dequantize(nearest_codes(module, "weight", torch.where(finite, w, 0.0)))
        off = finite & (near.view(torch.int32) != w.view(torch.int32))
        if off.any():
            dev = float((w - near).abs()[off].max())
            bad.insert(
                0,
                f"{int(off.sum())} are off that grid (max deviation {dev:.3g} from the "
                "nearest grid value" + (", -0.0 where the grid has 0.0)" if dev == 0 else ")"),
            )
    except Exception:  # noqa: BLE001 - a broken record: the message still names the layer
        bad = bad or ["some are off that grid"]
    found = f"of its {w.numel()} weight values " + " and ".join(bad or ["some are off that grid"])
    return NumericsError(
        f"cannot encode the .slim artifact: layer {layer!r} is recorded as "
        f"{info.get('bits')}-bit {info.get('scheme')} quantized, but {found}; was it trained "
        "or edited after quantization? It is not stored as float behind your back (the file "
        f"would be larger than promised). Fix: {fix}"
    )


def _palette_record(t: torch.Tensor):
    """A float tensor on a grid of <= 256 values: sorted fp32 value table + codes into it.

    Only when decoding gives ``t`` back value for value: a float64 value that is not an fp32
    value (0.1) would come back rounded from the fp32 table, so such a tensor stays dense.
    """
    if not t.is_floating_point() or t.numel() < 256:
        return None
    flat = t.reshape(-1)
    if torch.isnan(flat).any():  # no table entry equals NaN (bucketize may point past the end)
        return None
    values = torch.unique(flat.float())
    if values.numel() > 256:
        return None
    codes = torch.bucketize(flat.float(), values)
    # What the reader computes: table[codes] in fp32, then the tensor's own dtype.
    if not torch.equal(values[codes].to(t.dtype), flat):
        return None
    bits = max(1, int(np.ceil(np.log2(max(2, values.numel())))))
    codes_np = codes.reshape(t.shape).numpy().astype(np.int64)
    return codes_np, bits, {"encoding": "palette", "table": values.numpy().astype(np.float32)}


def encode(model: nn.Module) -> bytes:
    """The ``.slim`` bytes of ``model`` (zoo-built, see :mod:`slimkit.models.spec`)."""
    from slimkit.io import state_tensors
    from slimkit.quantization.codes import quant_info

    spec = model_spec.describe(model)
    modules = dict(model.named_modules())
    dynamic = set((getattr(model, "slimkit_int8", None) or {}).get("layers", []))  # DynamicInt8
    payload = _Payload()
    records = []
    _CACHE.clear()
    for name, t in state_tensors(model).items():
        layer, _, leaf = name.rpartition(".")
        module = modules.get(layer)
        found = None
        if leaf == "weight" and module is not None and quant_info(module, "weight") is not None:
            # Recorded as quantized: stored as its codes, or an error (never silently float).
            found = _quant_record(layer, module, t, _fix(layer, module, layer in dynamic))
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
#
# Every error names the file (``source``) and ends in UnsafeFileError: a .slim file is data, and
# nothing in it is trusted until checked. Sizes are checked before anything is allocated: each
# record's shape against the model spec (on the meta device) and machine memory, each stream's
# decoded length against what its record needs.

_MAX_MANIFEST = 256 * 2**20  # bytes of decoded manifest JSON (a big model's is a few MB)
_ENCODINGS = ("dense", "palette", "quant")
_REEXPORT = "the file is corrupt or was edited; export the model to .slim again"


def _bad(source: str, what: str) -> UnsafeFileError:
    return UnsafeFileError(f"{source}: {what}; {_REEXPORT}")


def _nat(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check_stream(rec: Any, where: str, source: str, symbols: bool) -> None:
    keys = ("offset", "length", "raw_length") + (("bits", "count") if symbols else ())
    if not isinstance(rec, dict) or not all(_nat(rec.get(k)) for k in keys):
        raise _bad(source, f"{where} must be a stream record with integer {list(keys)}")
    if rec.get("coding") not in entropy.METHOD_NAMES.values():
        raise _bad(
            source,
            f"{where} coding must be one of {list(entropy.METHOD_NAMES.values())}, "
            f"but got {rec.get('coding')!r}",
        )
    if symbols:
        if not 1 <= rec["bits"] <= 16 or rec.get("layout") not in ("packed", "bytes"):
            raise _bad(
                source,
                f"{where} needs bits in 1..16 and layout 'packed' or 'bytes', but got "
                f"bits={rec['bits']!r}, layout={rec.get('layout')!r}",
            )
        need = (
            rec["count"] if rec["layout"] == "bytes" else packed_nbytes(rec["count"], rec["bits"])
        )
        if rec["raw_length"] != need:
            raise _bad(
                source,
                f"{where} holds {rec['count']} symbols of {rec['bits']} bits ({rec['layout']}), "
                f"which take {need} bytes, but its raw_length is {rec['raw_length']}",
            )


def _check_record(rec: Any, source: str) -> int:
    """Check one tensor record's fields and sizes; return its decoded size in bytes."""
    if not isinstance(rec, dict) or not isinstance(rec.get("name"), str):
        raise _bad(source, f"a tensor record must be an object with a 'name', but got {rec!r:.80}")
    where = f"tensor {rec['name']!r}"
    shape = rec.get("shape")
    if not isinstance(shape, list) or not all(_nat(d) for d in shape):
        raise _bad(source, f"{where} shape must be a list of integers >= 0, but got {shape!r:.80}")
    if rec.get("dtype") not in _DTYPES or rec.get("encoding") not in _ENCODINGS:
        raise _bad(
            source,
            f"{where} needs dtype in {sorted(_DTYPES)} and encoding in {list(_ENCODINGS)}, but "
            f"got dtype={rec.get('dtype')!r}, encoding={rec.get('encoding')!r}",
        )
    numel = math.prod(shape)
    n_values = numel
    sparse = rec.get("sparse")
    if sparse:
        if (
            not isinstance(sparse, dict)
            or not _nat(sparse.get("nonzeros"))
            or sparse.get("index_bits") not in _INDEX_BITS
        ):
            raise _bad(source, f"{where} sparse record needs nonzeros and index_bits in (4, 8)")
        n_values = sparse["nonzeros"]
        if n_values > numel:
            raise _bad(source, f"{where} has {n_values} nonzeros but only {numel} elements")
        _check_stream(sparse.get("index"), f"{where} index", source, symbols=True)
        if sparse["index"]["bits"] != sparse["index_bits"] or sparse["index"]["count"] > 2 * numel:
            raise _bad(source, f"{where} index stream does not fit its {numel} elements")
    enc = rec["encoding"]
    _check_stream(rec.get("values"), f"{where} values", source, symbols=enc != "dense")
    values = rec["values"]
    itemsize = torch.empty((), dtype=_DTYPES[rec["dtype"]][0]).element_size()
    if enc == "dense" and values["raw_length"] != n_values * itemsize:
        raise _bad(
            source,
            f"{where} holds {n_values} {rec['dtype']} values ({n_values * itemsize} bytes), but "
            f"its values stream decodes to {values['raw_length']} bytes",
        )
    if enc != "dense" and values["count"] != n_values:
        raise _bad(
            source, f"{where} needs {n_values} codes, but its stream holds {values['count']}"
        )
    if enc == "palette":
        _check_stream(rec.get("table"), f"{where} table", source, symbols=False)
        if rec["table"]["raw_length"] % 4 or not 0 < rec["table"]["raw_length"] <= 4 * 256:
            raise _bad(source, f"{where} palette must hold 1..256 fp32 values")
    if enc == "quant" and not (
        isinstance(rec.get("params"), dict)
        and all(isinstance(v, str) for v in rec["params"].values())
        and isinstance(rec.get("info"), dict)
    ):
        raise _bad(source, f"{where} quant record needs 'params' (buffer names) and 'info'")
    return numel * itemsize


def _check_manifest(manifest: Any, payload: int, source: str) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _bad(source, f"the manifest must be an object with format {FORMAT!r}")
    version = manifest.get("version")
    if not (_nat(version) and version == FORMAT_VERSION):  # _nat: true is not version 1
        # The header's version was checked already; a writer sets both.
        raise UnsafeFileError(
            f"{source}: its manifest says .slim format version {version!r}, but its header says "
            f"{FORMAT_VERSION}; a slimkit writes the same version in both, so the file is corrupt "
            "or was edited (or a newer slimkit wrote it: upgrade slimkit); export the model to "
            ".slim again"
        )
    records = manifest.get("tensors")
    if not isinstance(records, list) or not isinstance(manifest.get("spec"), dict):
        raise _bad(source, "the manifest must hold a 'spec' object and a 'tensors' list")
    total = sum(_check_record(rec, source) for rec in records)
    names = [rec["name"] for rec in records]
    if len(set(names)) != len(names):
        raise _bad(source, "the manifest lists a tensor name twice")
    for rec in records:
        sparse = rec.get("sparse") or {}
        table = rec.get("table") if rec["encoding"] == "palette" else None
        for st in (rec.get("values"), table, sparse.get("index")):
            if isinstance(st, dict) and st["offset"] + st["length"] > payload:
                raise UnsafeFileError(
                    f"{source} is truncated: tensor {rec['name']!r} needs payload bytes up to "
                    f"{st['offset'] + st['length']}, but the file holds {payload}; {_REEXPORT}"
                )
    limit = model_spec.memory_limit()
    if limit is not None and total > limit:
        raise _bad(
            source,
            f"its tensors would take {total / 2**30:,.1f} GiB, more than this machine's memory "
            f"({limit / 2**30:,.1f} GiB)",
        )


def read_manifest(data: bytes, source: str = "the .slim artifact") -> tuple[dict[str, Any], int]:
    """``(manifest, payload_start)`` of ``.slim`` bytes; refuses anything malformed.

    ``source`` (the file's name) starts every error message.
    """
    if not data.startswith(MAGIC):
        raise UnsafeFileError(
            f"{source} is not a .slim artifact: it does not start with the magic bytes {MAGIC!r} "
            f"(it starts with {bytes(data[:8])!r}); export the model to .slim again"
        )
    try:
        version, method, n = _HEAD.unpack_from(data, len(MAGIC))
    except struct.error:
        raise UnsafeFileError(
            f"{source} is truncated inside its header ({len(data)} bytes); {_REEXPORT}"
        ) from None
    if version != FORMAT_VERSION:
        raise UnsafeFileError(
            f"{source}: .slim format version {version} is not supported (this slimkit reads version "
            f"{FORMAT_VERSION}); upgrade slimkit or re-export the model"
        )
    start = len(MAGIC) + _HEAD.size
    if start + n > len(data):
        raise UnsafeFileError(
            f"{source} is truncated: its manifest needs {n} bytes but only {len(data) - start} "
            f"follow the header; {_REEXPORT}"
        )
    try:
        manifest = json.loads(entropy.decode(method, data[start : start + n], _MAX_MANIFEST))
    except UnsafeFileError as exc:
        raise _bad(source, f"its manifest cannot be decoded ({exc})") from None
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise _bad(
            source, f"its manifest is not valid JSON ({type(exc).__name__}: {exc})"
        ) from None
    _check_manifest(manifest, len(data) - start - n, source)
    return manifest, start + n


def _stream(data: bytes, base: int, rec: dict[str, Any]) -> bytes:
    lo = base + rec["offset"]
    blob = data[lo : lo + rec["length"]]
    if len(blob) != rec["length"]:
        raise ValueError("a stream runs past the end of the file (truncated)")
    methods = {v: k for k, v in entropy.METHOD_NAMES.items()}
    raw = entropy.decode(methods[rec["coding"]], blob, rec["raw_length"])
    if len(raw) != rec["raw_length"]:
        raise ValueError(f"a stream decoded to {len(raw)} bytes instead of {rec['raw_length']}")
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
    numel = math.prod(shape)
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
        pos_np = _positions(_symbols(data, base, sparse["index"]), int(sparse["index_bits"]))
        if len(pos_np) != len(values) or (len(pos_np) and pos_np[-1] >= numel):
            raise ValueError(
                f"its index lists {len(pos_np)} positions (last {pos_np[-1] if len(pos_np) else None})"
                f" for {len(values)} values in {numel} elements"
            )
        pos = torch.from_numpy(pos_np)
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
    else:  # quant
        from slimkit.quantization.codes import QuantCodes, dequantize

        params = {k: done[v] for k, v in rec["params"].items()}
        out = dequantize(
            QuantCodes(codes.to(torch.int32), int(rec["values"]["bits"]), params, dict(rec["info"]))
        )
    if sparse:
        # Pruned positions are exactly zero whatever code sat there.
        mask = torch.zeros(numel, dtype=torch.bool)
        mask[pos] = True
        out = torch.where(mask.reshape(shape), out, torch.zeros((), dtype=out.dtype))
    return out.to(tdtype)


def _decode_records(
    data: bytes, manifest: dict[str, Any], base: int, source: str
) -> dict[str, torch.Tensor]:
    records = manifest["tensors"]
    done: dict[str, torch.Tensor] = {}
    # Every other record first: quantized weights reference their scale/codebook buffers by
    # name, and those may be palette- or sparse-coded (a 256-entry 8-bit codebook is).
    for rec in sorted(records, key=lambda r: r["encoding"] == "quant"):
        try:
            out = _decode_tensor(data, base, rec, done)
            if list(out.shape) != rec["shape"]:
                raise ValueError(f"it decoded to shape {list(out.shape)}, not {rec['shape']}")
        except KeyError as exc:  # a quant record naming a buffer that is not in the file
            raise _bad(
                source, f"tensor {rec['name']!r} refers to {exc} which is not in it"
            ) from None
        except Exception as exc:  # noqa: BLE001 - any decoding failure of file data
            raise _bad(
                source, f"tensor {rec['name']!r} is corrupt ({type(exc).__name__}: {exc})"
            ) from None
        done[rec["name"]] = out
    return {r["name"]: done[r["name"]] for r in records}


def decode_state(
    data: bytes, source: str = "the .slim artifact"
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(manifest, state_dict)`` of ``.slim`` bytes; ``source`` starts every error message."""
    manifest, base = read_manifest(data, source)
    return manifest, _decode_records(data, manifest, base, source)


def _read(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None


def load(path: str | os.PathLike[str], *, allow_nonfinite: bool = False) -> nn.Module:
    """Rebuild the module saved in a ``.slim`` artifact (weights bit-exact, eval mode).

    The model spec is checked against the records' shapes (on the meta device) before any
    tensor is decoded; every error names ``path``.
    """
    from slimkit.io import check_finite

    source = str(path)
    data = _read(path)
    manifest, base = read_manifest(data, source)
    shapes = {rec["name"]: rec["shape"] for rec in manifest["tensors"]}
    # Each record's own dtype: the rebuilt model is float32, and a float64 tensor loaded into it
    # came back rounded.
    dtypes = {rec["name"]: _DTYPES[rec["dtype"]][0] for rec in manifest["tensors"]}
    try:
        model = model_spec.build(manifest["spec"], shapes=shapes, dtypes=dtypes)
    except Exception as exc:  # spec's ConfigErrors name the layer; anything else is corrupt data
        reason = str(exc) if isinstance(exc, SlimkitError) else f"{type(exc).__name__}: {exc}"
        raise ConfigError(
            f"{source}: its manifest does not describe a model slimkit can build: {reason}"
        ) from None
    state = _decode_records(data, manifest, base, source)
    if not allow_nonfinite:
        check_finite(state, source)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # e.g. a buffer whose dtype cannot take the stored values
        detail = (str(exc).strip().splitlines() or [""])[-1].strip()
        raise _bad(source, f"its tensors do not fit the model ({detail})") from None
    return model.eval()


def stats(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Per-tensor sizes and bits per weight of a ``.slim`` artifact (for reports)."""
    data = _read(path)
    manifest, base = read_manifest(data, str(path))
    rows = []
    for rec in manifest["tensors"]:
        streams = {"values": rec["values"]}
        if rec.get("sparse"):
            streams["index"] = rec["sparse"]["index"]
        if rec["encoding"] == "palette":
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

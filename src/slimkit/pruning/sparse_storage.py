"""Storage of one unstructured-sparse tensor: relative indices or bitmask + values.

Two encodings, chosen per tensor by size (:func:`choose_encoding`):

* ``relative`` (Deep Compression, Han et al. 2016): for each stored entry, the number of zeros
  skipped since the previous one, in ``k`` bits. When a gap exceeds ``2**k - 1`` a filler entry
  (gap ``2**k - 1``, value = the zero value) is stored. Bytes: ``ceil(E*k/8) + ceil(E*vb/8)``.
* ``bitmask``: one bit per element (1 = stored) + the stored values.
  Bytes: ``ceil(n/8) + ceil(nnz*vb/8)``.

``vb`` (``value_bits``) is the width of one value: the dtype's width for floats, or the code
width for quantized codes (uint8 codes of ``bits`` bits, packed by the ``.slim`` writer with
``slimkit.quantization.packing.pack``). ``zero`` is the value that means "pruned" (0.0 for floats,
the code of 0.0 for quantized codes). Index bits are packed little-endian (bit 0 first).

Functions are pure NumPy: ``encode_sparse(values, ...) -> SparseEncoding``,
``decode_sparse(enc, shape) -> np.ndarray`` (exact: ``array_equal(decode(encode(x)), x)``).
``save_sparse``/``load_sparse`` write/read a whole state dict as one safetensors file with the
weights encoded (the measured sparse size when no ``.slim`` writer is used).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.errors import ConfigError


class SparseKind(str, enum.Enum):
    RELATIVE = "relative"
    BITMASK = "bitmask"


@dataclasses.dataclass
class SparseEncoding:
    """One tensor's sparse encoding.

    ``index``: uint8 bytes (packed k-bit gaps, or the packed bitmask); ``values``: the stored
    values in the input dtype (unpacked; ``value_bits`` says how wide each is once packed).
    """

    kind: SparseKind
    count: int  # n, elements of the dense tensor
    index_bits: int  # k for relative, 1 for bitmask
    value_bits: int
    zero: float | int
    dtype: str  # numpy dtype name of the values
    index: np.ndarray  # (ceil(E*k/8),) or (ceil(n/8),) uint8
    values: np.ndarray  # (E,) relative incl. fillers, or (nnz,) bitmask

    @property
    def entries(self) -> int:
        return int(self.values.size)

    @property
    def index_bytes(self) -> int:
        return int(self.index.size)

    @property
    def value_bytes(self) -> int:
        return math.ceil(self.entries * self.value_bits / 8)

    @property
    def nbytes(self) -> int:
        """Bytes of the encoded payload (index + values packed to ``value_bits``)."""
        return self.index_bytes + self.value_bytes

    @property
    def sizes(self) -> dict[str, int]:
        return {"index": self.index_bytes, "values": self.value_bytes, "total": self.nbytes}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"index": self.index, "values": self.values}

    def meta(self) -> dict[str, Any]:
        """JSON description; ``from_parts(meta, arrays)`` rebuilds the encoding."""
        return {
            "kind": self.kind.value,
            "count": self.count,
            "index_bits": self.index_bits,
            "value_bits": self.value_bits,
            "zero": self.zero,
            "dtype": self.dtype,
        }

    @classmethod
    def from_parts(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> SparseEncoding:
        return cls(
            SparseKind(meta["kind"]),
            int(meta["count"]),
            int(meta["index_bits"]),
            int(meta["value_bits"]),
            meta["zero"],
            str(meta["dtype"]),
            np.asarray(arrays["index"], dtype=np.uint8),
            np.asarray(arrays["values"]),
        )


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned ints < 2**bits into ceil(len*bits/8) bytes, little-endian bit order."""
    codes = np.asarray(codes, dtype=np.uint32).reshape(-1)
    planes = (codes[:, None] >> np.arange(bits, dtype=np.uint32)) & 1  # (E, bits)
    return np.packbits(planes.astype(np.uint8).reshape(-1), bitorder="little")


def unpack_bits(data: np.ndarray, bits: int, count: int) -> np.ndarray:
    flat = np.unpackbits(np.asarray(data, dtype=np.uint8), count=count * bits, bitorder="little")
    planes = flat.reshape(count, bits).astype(np.uint32)  # (E, bits)
    return (planes << np.arange(bits, dtype=np.uint32)).sum(axis=1).astype(np.uint32)


def _prepare(
    values: np.ndarray, zero: float | int, value_bits: int | None
) -> tuple[np.ndarray, int]:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ConfigError(f"encode_sparse takes a flattened 1-D array, but got shape {arr.shape}")
    if arr.dtype.kind not in "fiub":
        raise ConfigError(f"values must be a float or integer array, but got dtype {arr.dtype}")
    vb = value_bits if value_bits is not None else arr.dtype.itemsize * 8
    if isinstance(vb, bool) or not isinstance(vb, int) or not 1 <= vb <= 64:
        raise ConfigError(f"value_bits must be an integer in 1..64, but got {value_bits!r}")
    return arr, vb


def _relative(arr: np.ndarray, zero: float | int, k: int, vb: int) -> SparseEncoding:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 16:
        raise ConfigError(f"index_bits must be an integer in 1..16, but got {k!r}")
    n = arr.size
    pos = np.flatnonzero(arr != zero)  # (nnz,) positions of stored values
    gaps = np.diff(pos, prepend=-1) - 1  # zeros skipped before each stored value
    span = 1 << k  # a filler entry consumes 2**k positions (2**k - 1 skipped + itself)
    fillers = gaps // span
    residual = gaps - fillers * span  # <= 2**k - 1
    per_group = fillers + 1  # fillers, then the real entry
    total = int(per_group.sum())
    diffs = np.full(total, span - 1, dtype=np.int64)
    vals = np.full(total, zero, dtype=arr.dtype)
    ends = np.cumsum(per_group) - 1
    diffs[ends] = residual
    vals[ends] = arr[pos]
    return SparseEncoding(
        SparseKind.RELATIVE, n, k, vb, _scalar(zero), arr.dtype.name, pack_bits(diffs, k), vals
    )


def _bitmask(arr: np.ndarray, zero: float | int, vb: int) -> SparseEncoding:
    keep = arr != zero
    return SparseEncoding(
        SparseKind.BITMASK,
        arr.size,
        1,
        vb,
        _scalar(zero),
        arr.dtype.name,
        np.packbits(keep, bitorder="little"),
        arr[keep].copy(),
    )


def _scalar(zero: float | int) -> float | int:
    return zero.item() if isinstance(zero, np.generic) else zero


def encode_sparse(
    values: np.ndarray,
    *,
    kind: SparseKind | str = SparseKind.RELATIVE,
    index_bits: int = 4,
    zero: float | int = 0,
    value_bits: int | None = None,
) -> SparseEncoding:
    """Encode a flattened tensor (floats or integer codes) with one given encoding."""
    arr, vb = _prepare(values, zero, value_bits)
    kind = SparseKind(kind)
    if kind is SparseKind.BITMASK:
        return _bitmask(arr, zero, vb)
    return _relative(arr, zero, index_bits, vb)


def choose_encoding(
    values: np.ndarray,
    *,
    zero: float | int = 0,
    value_bits: int | None = None,
    index_bits: tuple[int, ...] = (2, 3, 4, 5, 6, 8),
) -> SparseEncoding:
    """The smallest of bitmask and relative-with-each-``index_bits`` (ties: bitmask, then low k)."""
    arr, vb = _prepare(values, zero, value_bits)
    best = _bitmask(arr, zero, vb)
    for k in index_bits:
        enc = _relative(arr, zero, k, vb)
        if enc.nbytes < best.nbytes:
            best = enc
    return best


def decode_sparse(enc: SparseEncoding, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Exact inverse of :func:`encode_sparse`; ``shape`` reshapes the flat result."""
    out = np.full(enc.count, enc.zero, dtype=np.dtype(enc.dtype))
    if enc.kind is SparseKind.BITMASK:
        keep = np.unpackbits(enc.index, count=enc.count, bitorder="little").astype(bool)
        out[keep] = enc.values
    else:
        diffs = unpack_bits(enc.index, enc.index_bits, enc.entries).astype(np.int64)
        positions = np.cumsum(diffs + 1) - 1  # each entry sits gap+1 after the previous one
        if positions.size and positions[-1] >= enc.count:
            raise ConfigError(
                f"corrupt relative encoding: index {positions[-1]} >= count {enc.count}"
            )
        out[positions] = enc.values
    if shape is not None:
        if math.prod(shape) != enc.count:
            raise ConfigError(
                f"shape {tuple(shape)} holds {math.prod(shape)} values, but the encoding has {enc.count}"
            )
        out = out.reshape(shape)
    return out


def _is_sparse_candidate(name: str, t: np.ndarray) -> bool:
    return t.ndim >= 2 and t.dtype.kind == "f" and name.endswith("weight")


def save_sparse(
    state: dict[str, Any], path: str | os.PathLike[str], *, min_sparsity: float = 0.0
) -> int:
    """Write a state dict to a safetensors file, weights sparse-encoded; return bytes written.

    Each float weight of rank >= 2 whose chosen encoding is smaller than dense is stored as
    ``<name>.index`` (uint8) + ``<name>.values``; everything else is stored dense. The JSON
    header lists each encoding's meta and shape. Read back with :func:`load_sparse`.
    """
    from safetensors.numpy import save as np_save

    from slimkit import atomic

    arrays: dict[str, np.ndarray] = {}
    encodings: dict[str, Any] = {}
    for name, tensor in state.items():
        t = tensor.detach().cpu().numpy() if hasattr(tensor, "detach") else np.asarray(tensor)
        if _is_sparse_candidate(name, t) and float(np.mean(t == 0)) >= min_sparsity:
            enc = choose_encoding(t.reshape(-1))
            if enc.nbytes < t.nbytes:
                encodings[name] = {**enc.meta(), "shape": list(t.shape)}
                arrays[f"{name}.index"] = enc.index
                arrays[f"{name}.values"] = np.ascontiguousarray(enc.values)
                continue
        arrays[name] = np.ascontiguousarray(t)
    data = np_save(
        arrays, metadata={"format": "slimkit-sparse", "encodings": json.dumps(encodings)}
    )
    atomic.write_bytes(path, data)
    return len(data)


def load_sparse(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a :func:`save_sparse` file back into a dense ``{name: array}`` state (no pickle)."""
    from safetensors.numpy import load as np_load

    raw = Path(path).read_bytes()
    arrays = np_load(raw)
    header_len = int.from_bytes(raw[:8], "little")
    meta = json.loads(raw[8 : 8 + header_len]).get("__metadata__", {}) or {}
    if meta.get("format") != "slimkit-sparse":
        raise ConfigError(
            f"{path} is not a slimkit sparse weights file (format={meta.get('format')!r})"
        )
    encodings = json.loads(meta["encodings"])
    out: dict[str, np.ndarray] = {}
    for name, enc in encodings.items():
        parts = {"index": arrays.pop(f"{name}.index"), "values": arrays.pop(f"{name}.values")}
        out[name] = decode_sparse(SparseEncoding.from_parts(enc, parts), tuple(enc["shape"]))
    out.update(arrays)
    return out

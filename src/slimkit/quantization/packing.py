"""Bit packing of integer codes: ``n`` codes of ``bits`` bits take ``ceil(n * bits / 8)`` bytes.

Bit order is little-endian throughout: code ``i`` occupies stream bits ``[i*bits, (i+1)*bits)``,
its least significant bit first, and stream bit ``8*k + j`` is bit ``j`` of byte ``k``. So two
4-bit codes ``a, b`` pack into the byte ``a | b << 4``, and eight 1-bit codes into one byte.
Any width 1..16 is supported (``bits > 8`` is used for fp16/bf16 bit patterns).
"""

from __future__ import annotations

import numpy as np

from slimkit.errors import ConfigError

MAX_BITS = 16


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise ConfigError(f"bits must be an integer in 1..{MAX_BITS}, but got {bits!r}")
    if not 1 <= bits <= MAX_BITS:
        raise ConfigError(f"bits must be in 1..{MAX_BITS}, but got {bits}")


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes that ``count`` codes of ``bits`` bits take once packed: ``ceil(count*bits/8)``."""
    _check_bits(bits)
    return (int(count) * int(bits) + 7) // 8


def pack(codes: np.ndarray, bits: int) -> bytes:
    """Pack integer ``codes`` (any shape, values in ``[0, 2**bits)``) into bytes."""
    _check_bits(bits)
    flat = np.asarray(codes).reshape(-1)
    if flat.size == 0:
        return b""
    if not np.issubdtype(flat.dtype, np.integer):
        raise ConfigError(f"codes must be integers to be packed, but got dtype {flat.dtype}")
    lo, hi = int(flat.min()), int(flat.max())
    if lo < 0 or hi >= 1 << bits:
        raise ConfigError(
            f"codes must be in [0, {1 << bits}) for {bits}-bit packing, but got values in "
            f"[{lo}, {hi}]; quantize to {bits} bits first or pack with more bits"
        )
    if bits == 8:
        return flat.astype(np.uint8).tobytes()
    # (n,) -> (n, bits) of 0/1, least significant bit first -> one little-endian bit stream.
    shifts = np.arange(bits, dtype=np.uint32)
    bitplanes = ((flat.astype(np.uint32)[:, None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(bitplanes.reshape(-1), bitorder="little").tobytes()


def unpack(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack`: the first ``count`` codes (uint8, or uint16 when bits > 8)."""
    _check_bits(bits)
    need = packed_nbytes(count, bits)
    if count < 0 or len(data) < need:
        raise ConfigError(
            f"{count} codes of {bits} bits need {need} bytes, but got {len(data)} bytes; "
            "the packed data is truncated or count/bits do not match how it was packed"
        )
    out_dtype = np.uint8 if bits <= 8 else np.uint16
    if count == 0:
        return np.zeros(0, dtype=out_dtype)
    raw = np.frombuffer(data, dtype=np.uint8, count=need)
    if bits == 8:
        return raw.copy()
    stream = np.unpackbits(raw, bitorder="little", count=count * bits)
    # (n, bits) of 0/1 -> (n,) integers; weights 1, 2, 4, ... match the packing bit order.
    weights = (1 << np.arange(bits, dtype=np.uint32)).astype(np.uint32)
    values = stream.reshape(count, bits).astype(np.uint32) @ weights
    return values.astype(out_dtype)

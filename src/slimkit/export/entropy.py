"""Entropy coding stage of the ``.slim`` artifact: canonical Huffman over byte symbols, or lzma.

:func:`encode` tries every coder on one byte stream and keeps the smallest (ties go to the
simpler coder), so a stream never grows by more than its one-byte method tag:

- ``raw`` (tag 0): the bytes as they are.
- ``huffman`` (tag 1): canonical Huffman code over the 256 byte values.
- ``lzma`` (tag 2): one byte log2(dictionary size), then an LZMA2 raw stream, preset 9 | extreme.

Huffman stream layout (all integers little-endian)::

    u32 count                 number of symbols encoded
    u8  table_kind            0: 256 code lengths, one byte each; 1: u16 n + n (symbol, length) pairs
    ... table
    bits                      codes MSB-first, concatenated, zero-padded to a whole byte

Code lengths define the canonical code (symbols sorted by (length, value), codes counting up),
as in DEFLATE, so the table is all a decoder needs. Everything is deterministic: the same input
gives the same bytes (ties in the Huffman tree are broken by symbol value).
"""

from __future__ import annotations

import heapq
import lzma
import struct

import numpy as np

from slimkit.errors import UnsafeFileError

RAW, HUFFMAN, LZMA = 0, 1, 2
METHOD_NAMES = {RAW: "raw", HUFFMAN: "huffman", LZMA: "lzma"}
_TABLE_BITS = 20
# lzma is slow (~1 s/MB); on a large stream whose bytes look random to Huffman it is skipped.
_LZMA_SKIP_BYTES, _LZMA_SKIP_RATIO = 256 * 1024, 0.9


def code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code length of each of the 256 byte values (0 for an unused value)."""
    lengths = np.zeros(256, dtype=np.int64)
    used = [int(s) for s in np.nonzero(counts)[0]]
    if len(used) == 1:
        lengths[used[0]] = 1  # a one-symbol alphabet still needs one bit per symbol
        return lengths
    # Heap of (weight, tie-break id, symbols under this node); merging adds one bit to each.
    heap = [(int(counts[s]), s, [s]) for s in used]
    heapq.heapify(heap)
    next_id = 256
    while len(heap) > 1:
        w1, _, s1 = heapq.heappop(heap)
        w2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            lengths[s] += 1
        heapq.heappush(heap, (w1 + w2, next_id, s1 + s2))
        next_id += 1
    return lengths


def canonical_codes(lengths: np.ndarray) -> dict[int, tuple[int, int]]:
    """``{symbol: (code, length)}`` of the canonical code for these lengths."""
    order = sorted((int(n), int(s)) for s, n in enumerate(lengths) if n > 0)
    codes: dict[int, tuple[int, int]] = {}
    code, prev = 0, order[0][0] if order else 0
    for n, s in order:
        code <<= n - prev
        codes[s] = (code, n)
        code += 1
        prev = n
    return codes


def _table_bytes(lengths: np.ndarray) -> bytes:
    used = [(s, int(n)) for s, n in enumerate(lengths) if n > 0]
    if any(n > 255 for _, n in used):  # pragma: no cover - needs > 2**255 symbols
        raise ValueError("Huffman code length above 255")
    pairs = struct.pack("<BH", 1, len(used)) + b"".join(struct.pack("<BB", s, n) for s, n in used)
    full = struct.pack("<B", 0) + bytes(int(n) for n in lengths)
    return pairs if len(pairs) <= len(full) else full


def huffman_encode(data: bytes) -> bytes:
    """Canonical Huffman code of ``data`` (see the module docstring for the layout)."""
    sym = np.frombuffer(data, dtype=np.uint8)
    head = struct.pack("<I", len(sym))
    if len(sym) == 0:
        return head + struct.pack("<BH", 1, 0)
    lengths = code_lengths(np.bincount(sym, minlength=256))
    codes = canonical_codes(lengths)
    code_of = np.zeros(256, dtype=np.int64)
    for s, (c, _) in codes.items():
        code_of[s] = c
    n_of = lengths[sym]  # (count,) code length of each symbol
    c_of = code_of[sym]
    start = np.cumsum(n_of) - n_of  # first stream bit of each symbol's code
    total = int(n_of.sum())
    bits = np.zeros(total + (-total) % 8, dtype=np.uint8)
    for j in range(int(n_of.max())):  # bit j (MSB first) of every code at least j+1 long
        has = n_of > j
        bits[start[has] + j] = (c_of[has] >> (n_of[has] - 1 - j)) & 1
    payload = np.packbits(bits).tobytes()
    return head + _table_bytes(lengths) + payload


def huffman_decode(blob: bytes, max_length: int | None = None) -> bytes:
    """Inverse of :func:`huffman_encode`; a corrupt stream (or one decoding to more than
    ``max_length`` bytes) raises UnsafeFileError."""
    try:
        (count,) = struct.unpack_from("<I", blob, 0)
        kind = blob[4]
        pos = 5
        lengths = np.zeros(256, dtype=np.int64)
        if kind == 0:
            lengths[:] = np.frombuffer(blob, dtype=np.uint8, count=256, offset=pos)
            pos += 256
        elif kind == 1:
            (n,) = struct.unpack_from("<H", blob, pos)
            pos += 2
            for _ in range(n):
                s, ln = blob[pos], blob[pos + 1]
                lengths[s] = ln
                pos += 2
        else:
            raise ValueError(f"unknown table kind {kind}")
    except (struct.error, IndexError, ValueError) as exc:
        raise UnsafeFileError(f"corrupt Huffman stream header: {exc}") from None
    if max_length is not None and count > max_length:  # checked before allocating `count` bytes
        raise UnsafeFileError(
            f"corrupt Huffman stream: it claims {count} symbols, more than the {max_length} expected"
        )
    if count == 0:
        return b""
    codes = canonical_codes(lengths)
    max_len = max(n for _, n in codes.values())
    bits = np.unpackbits(np.frombuffer(blob, dtype=np.uint8, offset=pos))
    if max_len > _TABLE_BITS:  # pragma: no cover - needs a very skewed alphabet
        return _decode_bitwise(bits, codes, count, max_len)
    # Table decode: the next max_len bits index (symbol, length) of the code they start with.
    sym_of = np.zeros(1 << max_len, dtype=np.int64)
    len_of = np.zeros(1 << max_len, dtype=np.int64)
    for s, (c, n) in codes.items():
        lo = c << (max_len - n)
        sym_of[lo : lo + (1 << (max_len - n))] = s
        len_of[lo : lo + (1 << (max_len - n))] = n
    padded = np.concatenate([bits, np.zeros(max_len, dtype=np.uint8)]).astype(np.int64)
    # windows[i] = the max_len-bit integer starting at stream bit i, (n_bits,)
    windows = np.zeros(len(bits), dtype=np.int64)
    for j in range(max_len):
        windows = (windows << 1) | padded[j : j + len(bits)]
    sym_l, len_l, win_l = sym_of.tolist(), len_of.tolist(), windows.tolist()
    out = bytearray(count)
    i, total = 0, len(bits)
    for k in range(count):
        if i >= total:
            raise UnsafeFileError("corrupt Huffman stream: ran out of bits")
        w = win_l[i]
        out[k] = sym_l[w]
        i += len_l[w]
    if i > total:
        raise UnsafeFileError("corrupt Huffman stream: ran out of bits")
    return bytes(out)


def _decode_bitwise(
    bits: np.ndarray, codes: dict[int, tuple[int, int]], count: int, max_len: int
) -> bytes:  # pragma: no cover - long codes only
    lookup = {(n, c): s for s, (c, n) in codes.items()}
    out = bytearray()
    code = n = i = 0
    bit_list = bits.tolist()
    while len(out) < count:
        if i >= len(bit_list) or n >= max_len:
            raise UnsafeFileError("corrupt Huffman stream: ran out of bits or hit an unknown code")
        code = (code << 1) | bit_list[i]
        n += 1
        i += 1
        s = lookup.get((n, code))
        if s is not None:
            out.append(s)
            code = n = 0
    return bytes(out)


def _lzma_filters(log2_dict: int) -> list[dict[str, int]]:
    return [
        {"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": 1 << log2_dict}
    ]


def lzma_encode(data: bytes) -> bytes:
    """One byte log2(dictionary size), then a raw LZMA2 stream (dictionary sized to the data:
    the default 64 MiB dictionary costs more to allocate than small streams take to code)."""
    log2_dict = max(12, min(26, (max(1, len(data)) - 1).bit_length()))
    return bytes([log2_dict]) + lzma.compress(
        data, format=lzma.FORMAT_RAW, filters=_lzma_filters(log2_dict)
    )


def lzma_decode(blob: bytes, max_length: int | None = None) -> bytes:
    """Inverse of :func:`lzma_encode`; stops at ``max_length`` + 1 bytes (a tiny corrupt or
    hostile stream can expand to gigabytes) and refuses truncated streams or trailing bytes."""
    if not blob or not 12 <= blob[0] <= 26:
        raise UnsafeFileError("corrupt lzma stream: bad dictionary size byte")
    dec = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_lzma_filters(blob[0]))
    try:
        out = dec.decompress(blob[1:], -1 if max_length is None else max_length + 1)
    except lzma.LZMAError as exc:
        raise UnsafeFileError(f"corrupt lzma stream: {exc}") from None
    if max_length is not None and len(out) > max_length:
        raise UnsafeFileError(
            f"corrupt lzma stream: it decodes to more than the {max_length} bytes expected"
        )
    if not dec.eof:
        raise UnsafeFileError("corrupt lzma stream: it ends before its end-of-stream marker")
    if dec.unused_data:
        raise UnsafeFileError(f"corrupt lzma stream: {len(dec.unused_data)} bytes after its end")
    return out


def encode(data: bytes, methods: tuple[int, ...] = (RAW, HUFFMAN, LZMA)) -> tuple[int, bytes]:
    """Return ``(method, coded)`` with the smallest coded form of ``data`` among ``methods``."""
    best = (RAW, data)
    for m in methods:
        if m == RAW:
            continue
        if (
            m == LZMA
            and len(data) > _LZMA_SKIP_BYTES
            and len(best[1]) > _LZMA_SKIP_RATIO * len(data)
        ):
            continue
        coded = huffman_encode(data) if m == HUFFMAN else lzma_encode(data)
        if len(coded) < len(best[1]):
            best = (m, coded)
    return best


def decode(method: int, blob: bytes, max_length: int | None = None) -> bytes:
    """The bytes coded in ``blob``; more than ``max_length`` of them is a corrupt stream."""
    if method == RAW:
        if max_length is not None and len(blob) > max_length:
            raise UnsafeFileError(
                f"corrupt raw stream: {len(blob)} bytes, more than the {max_length} expected"
            )
        return bytes(blob)
    if method == HUFFMAN:
        return huffman_decode(blob, max_length)
    if method == LZMA:
        return lzma_decode(blob, max_length)
    raise UnsafeFileError(f"unknown entropy coding method {method}; valid methods: {METHOD_NAMES}")

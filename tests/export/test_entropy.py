"""Entropy stage of the .slim artifact: exact round trips and real compression."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slimkit.errors import UnsafeFileError
from slimkit.export import entropy


@given(st.binary(max_size=2000))
@settings(max_examples=60, deadline=None)
def test_every_method_round_trips(data):
    assert entropy.huffman_decode(entropy.huffman_encode(data)) == data
    assert entropy.lzma_decode(entropy.lzma_encode(data)) == data
    method, coded = entropy.encode(data)
    assert entropy.decode(method, coded) == data
    assert len(coded) <= len(data)


def test_huffman_is_close_to_the_entropy_of_skewed_symbols():
    rng = np.random.default_rng(0)
    p = np.array([0.5, 0.25, 0.125, 0.0625, 0.0625])
    sym = rng.choice(5, size=20000, p=p).astype(np.uint8)
    coded = entropy.huffman_encode(sym.tobytes())
    q = np.bincount(sym) / len(sym)
    h_bits = -(q * np.log2(q)).sum() * len(sym)  # empirical entropy, ~1.875 bits/symbol
    # Huffman is within 1% of the entropy here; header: count, table kind, n, 5 (symbol, length).
    assert len(coded) <= math.ceil(1.01 * h_bits / 8) + 4 + 1 + 2 + 2 * 5 + 1
    assert entropy.huffman_decode(coded) == sym.tobytes()


def test_single_symbol_and_empty_streams():
    for data in (b"", b"\x07" * 1000):
        assert entropy.huffman_decode(entropy.huffman_encode(data)) == data
    # 1000 identical symbols take one bit each.
    assert len(entropy.huffman_encode(b"\x07" * 1000)) == 4 + 1 + 2 + 2 + 125


def test_encoding_is_deterministic_and_picks_the_smallest():
    rng = np.random.default_rng(1)
    data = rng.integers(0, 16, 5000).astype(np.uint8).tobytes()
    a, b = entropy.encode(data), entropy.encode(data)
    assert a == b
    sizes = [len(data), len(entropy.huffman_encode(data)), len(entropy.lzma_encode(data))]
    assert len(a[1]) == min(sizes)
    assert len(a[1]) < 0.55 * len(data)  # 4 bits of information in each byte


def test_corrupt_streams_raise_slimkit_errors():
    coded = entropy.huffman_encode(bytes(range(50)) * 10)
    with pytest.raises(UnsafeFileError):
        entropy.huffman_decode(coded[:20])
    with pytest.raises(UnsafeFileError):
        entropy.lzma_decode(b"\xffgarbage")
    with pytest.raises(UnsafeFileError):
        entropy.decode(9, b"")


def test_decoding_stops_at_the_expected_length():
    data = bytes(range(50)) * 100
    for method in (entropy.RAW, entropy.HUFFMAN, entropy.LZMA):
        got, coded = entropy.encode(data, (entropy.RAW, method))
        assert got == method
        assert entropy.decode(method, coded, len(data)) == data
        with pytest.raises(UnsafeFileError, match="more than the 100"):
            entropy.decode(method, coded, 100)
    # A Huffman header claiming 4 G symbols is refused before 4 GB are allocated.
    with pytest.raises(UnsafeFileError, match="4294967295 symbols, more than the 10 expected"):
        entropy.huffman_decode(b"\xff\xff\xff\xff\x01\x00\x00", max_length=10)


def test_lzma_refuses_truncated_streams_and_trailing_bytes():
    coded = entropy.lzma_encode(bytes(range(200)) * 50)
    with pytest.raises(UnsafeFileError, match="ends before its end-of-stream marker"):
        entropy.lzma_decode(coded[:-3])
    with pytest.raises(UnsafeFileError, match="3 bytes after its end"):
        entropy.lzma_decode(coded + b"abc")

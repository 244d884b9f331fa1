"""pack/unpack: exact round trip, ceil(n*bits/8) bytes, little-endian bit order, bad input."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slimkit.errors import ConfigError
from slimkit.quantization.packing import pack, packed_nbytes, unpack


@pytest.mark.parametrize("bits", range(1, 17))
def test_pack_size_and_roundtrip_every_width(bits):
    rng = np.random.default_rng(bits)
    for n in [0, 1, 7, 8, 9, int(rng.integers(10, 5000))]:
        codes = rng.integers(0, 2**bits, size=n)
        data = pack(codes, bits)
        assert len(data) == math.ceil(n * bits / 8) == packed_nbytes(n, bits)
        back = unpack(data, bits, n)
        assert back.dtype == (np.uint8 if bits <= 8 else np.uint16)
        np.testing.assert_array_equal(back, codes)


def test_bit_order_is_little_endian():
    assert pack(np.array([1, 2]), 4) == bytes([0x21])  # two 4-bit codes per byte, first low
    assert pack(np.array([1, 0, 0, 0, 0, 0, 0, 1]), 1) == bytes([0x81])
    assert pack(np.array([3, 1, 2, 0]), 2) == bytes([0b00100111])
    assert pack(np.array([5, 6]), 3) == bytes([0b00110101])  # 101 then 110 -> bits 0..5


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(1, 8), codes=st.lists(st.integers(0, 255), max_size=200))
def test_pack_unpack_property(bits, codes):
    arr = np.array(codes, dtype=np.int64) % (2**bits)
    out = unpack(pack(arr, bits), bits, len(arr))
    np.testing.assert_array_equal(out, arr)


def test_bad_input_is_refused():
    with pytest.raises(ConfigError, match=r"bits must be in 1..16, but got 17"):
        pack(np.array([1]), 17)
    with pytest.raises(ConfigError, match=r"bits must be in 1..16, but got 0"):
        unpack(b"", 0, 0)
    with pytest.raises(ConfigError, match=r"codes must be in \[0, 16\)"):
        pack(np.array([16]), 4)
    with pytest.raises(ConfigError, match=r"codes must be in \[0, 4\)"):
        pack(np.array([-1]), 2)
    with pytest.raises(ConfigError, match="need 2 bytes, but got 1"):
        unpack(b"\x00", 4, 3)
    with pytest.raises(ConfigError, match="integers"):
        pack(np.array([0.5]), 4)

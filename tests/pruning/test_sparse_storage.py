"""Sparse storage: exact round trip, bytes fall with sparsity, chosen encoding is the smallest."""

import math

import numpy as np
import pytest

from slimkit.errors import ConfigError
from slimkit.pruning import choose_encoding, decode_sparse, encode_sparse
from slimkit.pruning.sparse_storage import SparseEncoding, SparseKind, pack_bits, unpack_bits


def sparse(n, s, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(dtype)
    x[rng.random(n) < s] = 0
    return x


@pytest.mark.parametrize("s", [0.0, 0.3, 0.7, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_roundtrip_exact_floats(s, k):
    x = sparse(5000, s)
    for enc in (
        encode_sparse(x, index_bits=k),
        encode_sparse(x, kind="bitmask"),
        choose_encoding(x),
    ):
        assert np.array_equal(decode_sparse(enc), x)
        assert decode_sparse(enc).dtype == x.dtype


def test_relative_fillers_deep_compression_example():
    # Han et al. 2016 Fig. 2 style: gaps larger than 2**k - 1 need filler zeros.
    x = np.zeros(20, np.float32)
    x[[1, 4, 19]] = [3.4, 0.9, 1.7]
    enc = encode_sparse(x, index_bits=3)  # max gap 7: 4 -> 19 skips 14 zeros = 1 filler
    diffs = unpack_bits(enc.index, 3, enc.entries)
    assert diffs.tolist() == [1, 2, 7, 6]
    assert enc.values.tolist() == pytest.approx([3.4, 0.9, 0.0, 1.7])
    assert enc.nbytes == math.ceil(4 * 3 / 8) + 4 * 4
    assert np.array_equal(decode_sparse(enc, (4, 5)), x.reshape(4, 5))


def test_quantized_codes_with_nonzero_zero_code():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 16, 4000).astype(np.uint8)
    codes[rng.random(4000) < 0.9] = 8  # code 8 means the value 0.0
    enc = choose_encoding(codes, zero=8, value_bits=4)
    assert np.array_equal(decode_sparse(enc), codes)
    assert enc.value_bytes == math.ceil(enc.entries * 4 / 8)
    # Metadata round trip (what a file writer stores).
    again = SparseEncoding.from_parts(enc.meta(), enc.arrays())
    assert np.array_equal(decode_sparse(again), codes)


def test_bytes_fall_as_sparsity_rises():
    sizes = [choose_encoding(sparse(20000, s)).nbytes for s in [0.0, 0.5, 0.8, 0.9, 0.95, 0.99]]
    assert all(b < a for a, b in zip(sizes, sizes[1:], strict=False))
    assert sizes[-1] < 20000 * 4 * 0.02  # 99% sparse: < 2% of dense fp32


@pytest.mark.parametrize("s", [0.1, 0.5, 0.9, 0.99])
def test_chosen_encoding_is_smallest(s):
    x = sparse(8000, s, seed=3)
    best = choose_encoding(x)
    candidates = [encode_sparse(x, kind="bitmask")] + [
        encode_sparse(x, index_bits=k) for k in (2, 3, 4, 5, 6, 8)
    ]
    assert best.nbytes == min(c.nbytes for c in candidates)
    if s <= 0.5:
        assert best.kind is SparseKind.BITMASK
    if s >= 0.99:
        assert best.kind is SparseKind.RELATIVE


def test_pack_bits_little_endian():
    assert pack_bits(np.array([1, 2, 3, 0]), 2).tolist() == [0b00111001]
    assert unpack_bits(pack_bits(np.arange(16), 4), 4, 16).tolist() == list(range(16))


def test_bad_input():
    with pytest.raises(ConfigError, match="1-D"):
        encode_sparse(np.zeros((2, 2)))
    with pytest.raises(ConfigError, match="index_bits"):
        encode_sparse(np.zeros(4), index_bits=0)
    with pytest.raises(ConfigError, match="shape"):
        decode_sparse(encode_sparse(np.zeros(4)), (3,))


def test_save_sparse_state_roundtrip_and_smaller(tmp_path):
    import torch

    from slimkit.pruning.sparse_storage import load_sparse, save_sparse

    w = torch.from_numpy(sparse(300 * 100, 0.95).reshape(300, 100))
    state = {"fc.weight": w, "fc.bias": torch.randn(300), "steps": torch.tensor([3])}
    n = save_sparse(state, tmp_path / "s.safetensors")
    assert n == (tmp_path / "s.safetensors").stat().st_size
    assert n < 0.15 * w.numel() * 4
    back = load_sparse(tmp_path / "s.safetensors")
    for k, v in state.items():
        assert np.array_equal(back[k], v.numpy()), k

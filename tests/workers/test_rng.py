"""workers/rng.py: bit for bit against a NumPy implementation of the same algorithm, and N(0, 1) in distribution."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import ndtri

from workers import rng


def reference_bits(seed: int, n: int) -> np.ndarray:
    """lowbias32 with the two key words, in NumPy uint32 (products wrap modulo 2^32 by definition), read as int32."""
    k0, k1 = rng.keys(seed)
    c0, c1 = (np.uint32(c) for c in rng.MULTIPLIERS)
    x = np.arange(n, dtype=np.uint32) ^ np.uint32(k0)
    x ^= x >> np.uint32(16)
    x = (x * c0) ^ np.uint32(k1)
    x ^= x >> np.uint32(15)
    x = x * c1
    return (x ^ (x >> np.uint32(16))).view(np.int32)


def reference_normal(seed: int, n: int) -> np.ndarray:
    """The table transform of workers/rng.py in NumPy float32 and int32, from the words of `reference_bits`."""
    f = np.float32
    t0, t1 = (t.numpy() for t in rng._table_cpu())
    s = reference_bits(seed, n)
    a = np.where(s < 0, -1 - s, s)
    p = (np.int32(rng.INT32_MAX) - a).astype(f) * f(2.0**-32) + f(2.0**-33)
    raw = p.view(np.int32)
    segment = (raw >> rng.LOW_BITS) - (rng.FIRST_EXPONENT << rng.SEGMENT_BITS)
    frac = (raw & ((1 << rng.LOW_BITS) - 1)).astype(f) * f(2.0**-rng.LOW_BITS)
    z = t1[segment] * frac + t0[segment]
    return (z.view(np.int32) | (s & np.int32(-2**31))).view(f)


@pytest.mark.parametrize("seed", [0, 1, 2, 12345, 2**62 + 7, 2**63 - 1, 987654321987])
@pytest.mark.parametrize("n", [0, 1, 7, 1000, 65537, 238510])
def test_torch_matches_the_reference_bit_for_bit(seed: int, n: int) -> None:
    assert np.array_equal(rng.bits(seed, n).numpy(), reference_bits(seed, n))
    z = rng.normal(seed, n)
    assert z.dtype == torch.float32 and z.shape == (n,)
    assert np.array_equal(z.numpy().view(np.uint32), reference_normal(seed, n).view(np.uint32))


def test_prefix_property_and_distinct_seeds() -> None:
    long, short = rng.normal(9, 5000), rng.normal(9, 100)
    assert torch.equal(long[:100], short)
    assert not torch.equal(rng.normal(10, 100), short)


def test_the_log_and_the_table_are_accurate() -> None:
    p = np.concatenate([np.geomspace(2.0**-40, 1.0, 100001), np.linspace(1e-6, 0.5, 10001)])
    assert np.max(np.abs(rng.log64(p) - np.log(p)) / np.maximum(1e-300, np.abs(np.log(p)))) < 1e-14
    q = np.concatenate([np.geomspace(2.0**-34, 0.5, 100001), np.linspace(0.01, 0.5, 10001)])
    assert np.max(np.abs(rng.ppnd16_lower(q) + ndtri(q))) < 1e-13
    t0, t1 = (t.numpy() for t in rng._table_cpu())
    assert t0.dtype == np.float32 and len(t0) == rng.BINADES * 2**rng.SEGMENT_BITS + 1 and t0[-1] == 0
    assert np.all(t1[:-1] <= 0) and np.array_equal(t1[:-1], t0[1:] - t0[:-1])


def test_the_transform_is_the_inverse_cdf() -> None:
    # every 2^12-th word, and both ends: the normal quantile at u = (s + 2^31 + 1/2) / 2^32 to float32's resolution
    s = torch.cat([torch.arange(-2**31, 2**31, 2**12), -2**31 + torch.arange(64), 2**31 - 1 - torch.arange(64)])
    z = rng._normal_from_bits(s.to(torch.int32)).double().numpy()
    exact = ndtri((s.double().numpy() + 2.0**31 + 0.5) * 2.0**-32)
    assert np.max(np.abs(z - exact) / np.maximum(1.0, np.abs(exact))) < 3e-7
    # s and -1 - s give z and -z, to the bit
    words = torch.randint(-2**31, 2**31, (10000,), dtype=torch.int64).to(torch.int32)
    assert torch.equal(rng._normal_from_bits(words.clone()), -rng._normal_from_bits(-1 - words))


def moments(z: np.ndarray) -> tuple[float, float, float, float]:
    z = z.astype(np.float64)
    mean = float(z.mean())
    c = z - mean
    var = float((c * c).mean())
    return mean, var, float((c**3).mean() / var**1.5), float((c**4).mean() / var**2 - 3)


@pytest.mark.slow
def test_ten_million_draws_are_standard_normal() -> None:
    """Over 10^7 draws: mean and variance within 1e-3 of N(0, 1)'s; skewness and excess kurtosis within 1e-3
    plus their sampling error (their standard errors at 10^7 draws are sqrt(6/n) = 7.7e-4 and sqrt(24/n) =
    1.5e-3, so 1e-3 alone would fail a perfect generator about half the time; 4 standard errors here); beyond
    5 sigma at the normal's rate within 4 Poisson standard deviations; and the exact tail rate of the transform
    (it is monotone in the word, so the words beyond 5 sigma can be counted)."""
    n = 10**7
    z = np.concatenate([rng.normal(seed, n // 4).numpy() for seed in (101, 202, 303, 404)])
    mean, var, skew, kurt = moments(z)
    assert abs(mean) < 1e-3 and abs(var - 1) < 1e-3
    assert abs(skew) < 1e-3 + 4 * math.sqrt(6 / n) and abs(kurt) < 1e-3 + 4 * math.sqrt(24 / n)
    rate = math.erfc(5 / math.sqrt(2))  # P(|z| > 5) = 5.73e-7
    beyond = int((np.abs(z) > 5).sum())
    assert abs(beyond - n * rate) <= 4 * math.sqrt(n * rate) + 1
    # the words whose normal is beyond 5 sigma: the two ends of [0, 2^32), found by bisection on the transform
    def first_word_above(level: float) -> int:
        lo, hi = -2**31, 2**31 - 1  # the transform is monotone in the int32 word s
        while lo < hi:
            mid = (lo + hi) // 2
            if float(rng._normal_from_bits(torch.tensor([mid], dtype=torch.int32))[0]) > level:
                hi = mid
            else:
                lo = mid + 1
        return lo
    upper = 2**31 - first_word_above(5.0)
    assert abs(2 * upper / 2**32 - rate) < 0.01 * rate


def test_stratified_moments_of_the_transform() -> None:
    """The transform over an evenly spaced grid of 2^22 words has the normal's moments to 1e-4 (no sampling
    error: this checks the transform, the random test above the bits)."""
    x = (torch.arange(-2**31, 2**31, 2**10, dtype=torch.int64) + 2**9).to(torch.int32)
    mean, var, skew, kurt = moments(rng._normal_from_bits(x).numpy())
    assert abs(mean) < 1e-6 and abs(var - 1) < 1e-4 and abs(skew) < 1e-4 and abs(kurt) < 2e-3


def test_slices_and_offsets_change_no_bit() -> None:
    n = 2 * rng.CPU_SLICE + 12345
    whole = rng._normal_from_bits(rng.bits(77, n))
    assert torch.equal(rng.normal(77, n), whole)
    assert torch.equal(rng.bits(77, 100, start=rng.CPU_SLICE), rng.bits(77, rng.CPU_SLICE + 100)[-100:])

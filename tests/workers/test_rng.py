"""workers/rng.py: bit for bit against a NumPy implementation of the same algorithm, and N(0, 1) in distribution."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import ndtri

from workers import rng

U32 = np.uint64(0xFFFFFFFF)


def reference_bits(seed: int, n: int) -> np.ndarray:
    """lowbias32 with the two key words, in NumPy uint64: products wrap modulo 2^64, masked to 32 bits."""
    k0, k1 = rng.keys(seed)
    c0, c1 = (np.uint64(c) for c in rng.MULTIPLIERS)
    x = np.arange(n, dtype=np.uint64) ^ np.uint64(k0)
    x ^= x >> np.uint64(16)
    x = ((x * c0) & U32) ^ np.uint64(k1)
    x ^= x >> np.uint64(15)
    x = (x * c1) & U32
    return x ^ (x >> np.uint64(16))


def reference_log(p: np.ndarray) -> np.ndarray:
    m, e = np.frexp(p)
    low = (m < rng.SQRT_HALF).astype(np.float64)
    m = m * (low + 1.0)
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    series = s2 * rng.ATANH_TERMS[-1]
    for c in reversed(rng.ATANH_TERMS[1:-1]):
        series = (series + c) * s2
    series = series + rng.ATANH_TERMS[0]
    return (s * series) * 2.0 + (e.astype(np.float64) - low) * rng.LN2


def horner(r: np.ndarray, coeffs: tuple[float, ...]) -> np.ndarray:
    acc = r * r.dtype.type(coeffs[-1])
    for c in reversed(coeffs[1:-1]):
        acc = (acc + r.dtype.type(c)) * r
    return acc + r.dtype.type(coeffs[0])


def reference_normal(seed: int, n: int) -> np.ndarray:
    x = reference_bits(seed, n).astype(np.int64)
    t = x * 2 - (2**32 - 1)
    q = t.astype(np.float32) * np.float32(2.0**-33)
    r = np.float32(rng.CENTRAL_R) - q * q
    z = (q * horner(r, rng.A)) / horner(r, rng.B)
    tail = np.abs(q) > np.float32(rng.SPLIT)
    tt = t[tail]
    p = (2**32 - np.abs(tt)).astype(np.float64) * 2.0**-33
    rt = np.sqrt(-reference_log(p)) - 1.6
    zt = horner(rt, rng.C) / horner(rt, rng.D)
    z[tail] = np.where(tt < 0, -zt, zt).astype(np.float32)
    return z


@pytest.mark.parametrize("seed", [0, 1, 2, 12345, 2**62 + 7, 2**63 - 1, 987654321987])
@pytest.mark.parametrize("n", [0, 1, 7, 1000, 65537, 238510])
def test_torch_matches_the_reference_bit_for_bit(seed: int, n: int) -> None:
    assert np.array_equal(rng.bits(seed, n).numpy(), reference_bits(seed, n).astype(np.int64))
    z = rng.normal(seed, n)
    assert z.dtype == torch.float32 and z.shape == (n,)
    assert np.array_equal(z.numpy().view(np.uint32), reference_normal(seed, n).view(np.uint32))


def test_prefix_property_and_distinct_seeds() -> None:
    long, short = rng.normal(9, 5000), rng.normal(9, 100)
    assert torch.equal(long[:100], short)
    assert not torch.equal(rng.normal(10, 100), short)


def test_the_log_is_accurate_and_the_transform_is_the_inverse_cdf() -> None:
    p = np.concatenate([np.arange(1, 2**16, dtype=np.float64) * 2.0**-33, np.linspace(1e-6, 0.5, 10001)])
    got = rng._log(torch.from_numpy(p)).numpy()
    assert np.max(np.abs(got - np.log(p)) / np.abs(np.log(p))) < 1e-12
    # every 2^16-th word, and the ends: the normal quantile at u = (x + 1/2) / 2^32 to float32's resolution
    x = torch.cat([torch.arange(0, 2**32, 2**16), torch.arange(64), 2**32 - 1 - torch.arange(64)])
    z = rng._normal_from_bits(x.clone()).double().numpy()
    exact = ndtri((x.double().numpy() + 0.5) * 2.0**-32)
    assert np.max(np.abs(z - exact) / np.maximum(1.0, np.abs(exact))) < 1e-6


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
        lo, hi = 0, 2**32 - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if float(rng._normal_from_bits(torch.tensor([mid]))[0]) > level:
                hi = mid
            else:
                lo = mid + 1
        return lo
    upper = 2**32 - first_word_above(5.0)
    assert abs(2 * upper / 2**32 - rate) < 0.01 * rate


def test_stratified_moments_of_the_transform() -> None:
    """The transform over an evenly spaced grid of 2^22 words has the normal's moments to 1e-4 (no sampling
    error: this checks the transform, the random test above the bits)."""
    x = torch.arange(0, 2**32, 2**10, dtype=torch.int64) + 2**9
    mean, var, skew, kurt = moments(rng._normal_from_bits(x).numpy())
    assert abs(mean) < 1e-6 and abs(var - 1) < 1e-4 and abs(skew) < 1e-4 and abs(kurt) < 2e-3


def test_slices_and_offsets_change_no_bit() -> None:
    n = 2 * rng.CPU_SLICE + 12345
    whole = rng._normal_from_bits(rng.bits(77, n))
    assert torch.equal(rng.normal(77, n), whole)
    assert torch.equal(rng.bits(77, 100, start=rng.CPU_SLICE), rng.bits(77, rng.CPU_SLICE + 100)[-100:])

"""A counter-based N(0, 1) generator in torch tensor ops that draws bitwise the same numbers on every device.

Why: a CUDA worker should draw its trials' noise on the GPU (no host round trip), while every replica, on any
CPU or any CUDA GPU, must rebuild bitwise the same perturbation from a seed. Torch's own generators differ
between devices, and transcendental functions (log, exp, sin, erfinv) differ in the last ulp between CPU and
CUDA libm. So this module uses only operations whose results IEEE 754 fixes to the bit, and each as a torch
operation of its own.

Bits. Draw i of a stream is a keyed 32-bit hash of the counter i, a bijection of [0, 2^32): Wellons' "lowbias32"
(x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16, products modulo 2^32) with a key
word xored in before it and another between its two products. The two key words are the halves of a SplitMix64
output of the seed, in Python integers. Values live in int64 tensors in [0, 2^32) (torch has no uint32 arithmetic on
every device): shifts are of non-negative values, so arithmetic and logical shifts agree; a multiplier c above
2^31 is used as c - 2^32, which is the same modulo 2^32, so a product never leaves (-2^63, 2^63) (signed
overflow is not something to rely on), and `& 0xFFFFFFFF` takes it modulo 2^32 (two's complement).

Normal. The inverse of the normal CDF by Wichura's AS 241 (PPND7, about 7 correct digits, below float32's
resolution): u = (x + 1/2) / 2^32 in (0, 1), q = u - 1/2. The odd integer t = 2x + 1 - 2^32 gives q = t * 2^-33:
an exact integer, an int-to-float conversion (correctly rounded) and a power-of-two scale (exact).
- |q| <= 0.425 (85 % of the draws): a rational function of r = 0.180625 - q^2 of degree 3/3, in float32.
- otherwise: r = sqrt(-log(p)) with p = 1/2 - |q| = (2^32 - |t|) * 2^-33, exact in float64; a rational function
  of r - 1.6 of degree 3/2, in float64, then rounded to float32. AS 241's third piece (r > 5, p < 1.4e-11) is
  never needed: p >= 2^-33, so r <= 4.78 and |z| <= 6.34 (the normal's mass beyond is 2.3e-10). The log is
  our own: p = m * 2^e read off the float64's exponent and fraction bits (exact), m doubled into
  [sqrt(1/2), sqrt(2)) when below sqrt(1/2) (exact), log(m) = 2 atanh(s) = 2 s (1 + s^2/3 + s^4/5 + ...) with
  s = (m - 1) / (m + 1), |s| < 0.172, summed to s^15 (truncation below 1e-13), plus e * ln 2.
So the transform needs +, -, *, / on float32 and float64, sqrt, comparisons, bit operations and int/float conversions:
IEEE 754 rounds each of them correctly (to nearest), the same on every CPU and CUDA GPU.

FMA. A fused multiply-add rounds once where a*b then +c rounds twice, so a contraction would change bits. Every
multiplication and every addition here is a separate torch operation (a kernel of its own, its result rounded to
the tensor's dtype and stored), never addcmul, lerp, `alpha=` or torch.compile, so no compiler can fuse them.
Division is always tensor by tensor: torch's CUDA `div` by a Python scalar multiplies by its reciprocal, which
rounds differently. Constants used with float32 tensors are float32 values (so converting them is exact).

Speed: one pass per operation over the whole draw, all vectorized; `make bench` compares it with NumPy's
Philox side by side (BENCHMARKS.md, "Noise generator").
"""
from __future__ import annotations

import numpy as np
import torch

MASK32 = 0xFFFFFFFF
CPU_SLICE = 1 << 17  # draws per pass on a CPU: 1 MiB of int64 words (BENCHMARKS.md, "Noise generator")
MULTIPLIERS = (0x7FEB352D, 0x846CA68B)  # lowbias32's; used as c or c - 2^32, whichever is below 2^31 in size
SPLIT = float(np.float32(0.425))  # AS 241: the central piece for |q| <= SPLIT (float32 |q|, a float32 SPLIT)
SQRT_HALF = 0.7071067811865476  # the float64 nearest sqrt(1/2); any fixed number near it would do
LN2 = 0.6931471805599453
FRACTION = (1 << 52) - 1  # float64 bits: the fraction field
HALF_EXPONENT = 1022 << 52  # float64 bits: the exponent field of [1/2, 1)


def _f32(x: float) -> float:
    return float(np.float32(x))


# AS 241 PPND7 coefficients, central piece in float32 (rounded once, here), tails in float64.
A = tuple(_f32(c) for c in (3.3871327179, 50.434271938, 159.29113202, 59.109374720))
B = tuple(_f32(c) for c in (1.0, 17.895169469, 78.757757664, 67.187563600))
C = (1.4234372777, 2.7568153900, 1.3067284816, 0.17023821103)
D = (1.0, 0.73700164250, 0.12021132975)
CENTRAL_R = _f32(0.180625)
ATANH_TERMS = tuple(1.0 / (2 * k + 1) for k in range(8))  # 1, 1/3, ..., 1/15 (correctly rounded quotients)


def splitmix64(x: int) -> tuple[int, int]:
    """(next state, output) of SplitMix64, in Python integers."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x, z ^ (z >> 31)


def keys(seed: int) -> tuple[int, int]:
    """Two 32-bit key words of a seed (any integer; taken modulo 2^64): one SplitMix64 output's halves."""
    _, z = splitmix64(seed & 0xFFFFFFFFFFFFFFFF)
    return z & MASK32, z >> 32


def _signed(c: int) -> int:
    """c modulo 2^32 as a number below 2^31 in size: its products with x < 2^32 fit in int64."""
    return c - 2**32 if c >= 2**31 else c


def bits(seed: int, n: int, device: torch.device | str = "cpu", start: int = 0) -> torch.Tensor:
    """Words start, ..., start + n - 1 of the seed's stream of 32-bit words: (n,) int64 in [0, 2^32) on `device`."""
    if not (0 <= start and 0 <= n and start + n <= 2**32):
        raise ValueError(f"a stream holds 2^32 words; asked for {n} from {start}")
    k0, k1 = keys(seed)
    c0, c1 = (_signed(c) for c in MULTIPLIERS)
    x = torch.arange(start, start + n, dtype=torch.int64, device=device).bitwise_xor_(k0)
    shifted = torch.empty_like(x)  # in place, one scratch buffer: no new memory per operation
    x.bitwise_xor_(torch.bitwise_right_shift(x, 16, out=shifted))
    x.mul_(c0).bitwise_and_(MASK32).bitwise_xor_(k1)
    x.bitwise_xor_(torch.bitwise_right_shift(x, 15, out=shifted))
    x.mul_(c1).bitwise_and_(MASK32)
    return x.bitwise_xor_(torch.bitwise_right_shift(x, 16, out=shifted))


def _horner(r: torch.Tensor, coeffs: tuple[float, ...]) -> torch.Tensor:
    """c0 + c1 r + ... by Horner's rule from the highest coefficient, one rounded operation at a time (in place
    on one new tensor)."""
    acc = r * coeffs[-1]
    for c in reversed(coeffs[1:-1]):
        acc.add_(c).mul_(r)
    return acc.add_(coeffs[0])


def _log(p: torch.Tensor) -> torch.Tensor:
    """log(p) for float64 p > 0 (normal numbers), from exactly rounded operations only; relative error < 1e-12."""
    raw = p.view(torch.int64)
    e = (raw >> 52) - 1022  # p = m * 2^e with m in [1/2, 1): the exponent field (p > 0: no sign bit)
    m = (raw & FRACTION | HALF_EXPONENT).view(torch.float64)
    low = (m < SQRT_HALF).to(torch.float64)  # 1.0 where m gets doubled into [sqrt(1/2), 1)
    m.mul_(low + 1.0)
    s = (m - 1.0).div_(m.add_(1.0))
    series = _horner(s * s, ATANH_TERMS)
    return series.mul_(s).mul_(2.0).add_(e.to(torch.float64).sub_(low).mul_(LN2))


def _tail(t: torch.Tensor) -> torch.Tensor:
    """The tails' normal numbers (|q| > 0.425) from their t, in float64."""
    p = (2**32 - t.abs()).to(torch.float64).mul_(2.0**-33)  # 1/2 - |q|, exact: an integer below 2^32, scaled
    r = torch.sqrt_(_log(p).neg_()).sub_(1.6)
    sign = (t < 0).to(torch.float64).mul_(-2.0).add_(1.0)  # +-1: multiplying by it is exact
    return _horner(r, C).div_(_horner(r, D)).mul_(sign)


def _normal_from_bits(x: torch.Tensor) -> torch.Tensor:
    """N(0, 1) float32 numbers from 32-bit words x (int64 in [0, 2^32)), one per word; x is overwritten."""
    t = x.mul_(2).sub_(2**32 - 1)  # odd, in (-2^32, 2^32): q = t * 2^-33
    q = t.to(torch.float32).mul_(_f32(2.0**-33))
    r = (q * q).neg_().add_(CENTRAL_R)  # 0.180625 - q^2: negation is exact, so one rounding as in a subtraction
    z = _horner(r, A).mul_(q).div_(_horner(r, B))
    tail = torch.nonzero(q.abs_() > SPLIT).squeeze(1)  # the split tested on float32 |q|: a fixed choice
    if tail.numel():
        z.index_copy_(0, tail, _tail(t.index_select(0, tail)).to(torch.float32))
    return z


def normal(seed: int, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """z ~ N(0, 1)^n, float32 on `device`: a pure function of (seed, n), bitwise the same on every device; the
    first m numbers of a longer draw are the draw of length m. On a CPU in slices of CPU_SLICE (elementwise, so
    the slices change no bit): a slice's words and temporaries stay in the cache."""
    device = torch.device(device)
    if device.type != "cpu" or n <= CPU_SLICE:
        return _normal_from_bits(bits(seed, n, device))
    out = torch.empty(n, dtype=torch.float32)
    for lo in range(0, n, CPU_SLICE):
        hi = min(n, lo + CPU_SLICE)
        out[lo:hi] = _normal_from_bits(bits(seed, hi - lo, device, lo))
    return out

"""A counter-based N(0, 1) generator in torch tensor ops that draws bitwise the same numbers on every device.

Why: a CUDA worker should draw its trials' noise on the GPU (no host round trip), while every replica, on any
CPU or any CUDA GPU, must rebuild bitwise the same perturbation from a seed. Torch's own generators differ
between devices, transcendental functions (log, exp, sin, erfinv) differ in the last ulp between CPU and CUDA
libm, and torch's CPU sqrt is not always correctly rounded. So a draw uses only operations whose results
IEEE 754 fixes to the bit, each as a torch operation of its own.

Bits. Draw i of a stream is a keyed 32-bit hash of the counter i, a bijection of [0, 2^32): Wellons' "lowbias32"
(x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16, products modulo 2^32) with a key
word xored in before it and another between its two products. The two key words are the halves of a SplitMix64
output of the seed, in Python integers. A word lives in an int32 tensor as its two's complement s (s = x for
x < 2^31, x - 2^32 above): xor, and, and a product's low 32 bits do not depend on how the word is read, so
int32 products that wrap modulo 2^32 are exactly lowbias32's. torch's int32 multiply wraps on CPUs (vector and
scalar loops) and CUDA GPUs; tests/workers/test_rng.py checks the words against NumPy's uint32 arithmetic, which
wraps by definition, and `make gpu-check` compares a GPU's draws with the CPU's, bit for bit. A right shift of a
negative int32 brings in ones, so every logical shift x >> k is written (s >> k) & (2^(32-k) - 1).

Normal. z = Phi^-1(u) at u = (s + 2^31 + 1/2) / 2^32 in (0, 1), a uniform relabelling of the word, by a table:
- the word's distance from the middle, p = 1/2 - |u - 1/2| in [2^-33, 1/2], is the float32
  float32(2^31 - 1 - a) * 2^-32 + 2^-33 with a = s, or -1 - s when s < 0 (bit operations; a correctly rounded
  int-to-float conversion, an exact scale, a rounded sum), so s and -1 - s give z and -z;
- p's exponent and the top 10 bits of its fraction pick one of 2^10 equal segments of p's binade (32 binades
  from 2^-33 to 1/2), and |z| is interpolated linearly in the segment: T0[i] + T1[i] * f, f = the fraction's
  other 13 bits times 2^-13 (exact); the sign is the word's sign bit, set with bit operations.
T0 holds |Phi^-1| at the 32 * 2^10 + 1 segment ends, rounded to float32, and T1 its differences; both are built
once per process in float64 NumPy arithmetic (+, -, *, /, sqrt and a log of our own from them: each correctly
rounded, the same bits on every machine) by Wichura's AS 241 (PPND16, 16 digits). The interpolation is within
3e-7 of Phi^-1 (tests/workers/test_rng.py), below float32's resolution of p near 1/2; |z| <= 6.34 (p >= 2^-33;
the normal's mass beyond is 2.3e-10).
So a draw needs integer and bit operations, two int-to-float conversions, a float32 product and sum, and two
gathers from the table: each exact or correctly rounded, the same on every CPU and CUDA GPU, with no branch.

FMA. A fused multiply-add rounds once where a*b then +c rounds twice, so a contraction would change bits. Every
multiplication and every addition here is a separate torch operation (a kernel of its own, its result rounded to
the tensor's dtype and stored), never addcmul, lerp, `alpha=` or torch.compile, so no compiler can fuse them.

Speed: a fixed number of vectorized passes per slice of CPU_SLICE words; `make bench` compares it with NumPy's
Philox side by side (BENCHMARKS.md, "Noise generator").
"""
from __future__ import annotations

import functools

import numpy as np
import torch

MASK32 = 0xFFFFFFFF
CPU_SLICE = 1 << 16  # draws per pass on a CPU: the slice's words and temporaries stay in the cache
MULTIPLIERS = (0x7FEB352D, 0x846CA68B)  # lowbias32's, used as int32 (c - 2^32 when c >= 2^31: the same low bits)
MAX_WORDS = 2**31  # a stream's counters are int32: 2^31 words (8 GiB of float32) per seed
INT32_MAX = 2**31 - 1
SEGMENT_BITS = 10  # segments per binade of p: 2^10
LOW_BITS = 23 - SEGMENT_BITS  # the fraction bits interpolated within a segment
FIRST_EXPONENT = 127 - 33  # the biased float32 exponent of 2^-33, p's least binade
BINADES = 32  # 2^-33 ... 1/2

# AS 241 PPND16 (Wichura 1988): numerator and denominator coefficients, lowest power first.
PPND16 = {
    "a": (3.387132872796366608, 133.14166789178437745, 1971.5909503065514427, 13731.693765509461125,
          45921.953931549871457, 67265.770927008700853, 33430.575583588128105, 2509.0809287301226727),
    "b": (1.0, 42.313330701600911252, 687.1870074920579083, 5394.1960214247511077, 21213.794301586595867,
          39307.89580009271061, 28729.085735721942674, 5226.495278852545925),
    "c": (1.42343711074968357734, 4.6303378461565452959, 5.7694972214606914055, 3.64784832476320460504,
          1.27045825245236838258, 0.24178072517745061177, 0.0227238449892691845833, 7.7454501427834140764e-4),
    "d": (1.0, 2.05319162663775882187, 1.6763848301838038494, 0.68976733498510000455, 0.14810397642748007459,
          0.0151986665636164571966, 5.475938084995344946e-4, 1.05075007164441684324e-9),
    "e": (6.6579046435011037772, 5.4637849111641143699, 1.7848265399172913358, 0.29656057182850489123,
          0.026532189526576123093, 0.0012426609473880784386, 2.71155556874348757815e-5, 2.01033439929228813265e-7),
    "f": (1.0, 0.59983220655588793769, 0.13692988092273580531, 0.0148753612908506148525,
          7.868691311456132591e-4, 1.8463183175100546818e-5, 1.4215117583164458887e-7, 2.04426310338993978564e-15),
}


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


def as_int32(c: int) -> int:
    """The 32-bit word c as the int32 with the same bits."""
    return c - 2**32 if c >= 2**31 else c


def _i(v: int) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.int32)


# Constants as 0-dim tensors: torch wraps a Python number into a tensor on every call, which costs as much as
# the operation itself on a slice (0-dim CPU tensors also serve CUDA tensors, as scalars).
_LOW_MASKS = {k: _i((1 << (32 - k)) - 1) for k in (15, 16)}
_MULTIPLIERS = tuple(_i(as_int32(c)) for c in MULTIPLIERS)
_INT32_MAX, _SIGN_BIT, _FRACTION_LOW = _i(INT32_MAX), _i(-2**31), _i((1 << LOW_BITS) - 1)
_FIRST_SEGMENT = _i(FIRST_EXPONENT << SEGMENT_BITS)
_SCALE, _HALF_STEP, _LOW_SCALE = (torch.tensor(v, dtype=torch.float32) for v in (2.0**-32, 2.0**-33, 2.0**-LOW_BITS))
_COUNTER = torch.arange(CPU_SLICE, dtype=torch.int32)  # a slice's counters are this plus its start


def _shift_xor(x: torch.Tensor, k: int, scratch: torch.Tensor) -> torch.Tensor:
    """x ^= x >> k on 32-bit words held as int32 (a logical shift: the sign bits shifted in are masked off)."""
    return x.bitwise_xor_(torch.bitwise_right_shift(x, k, out=scratch).bitwise_and_(_LOW_MASKS[k]))


def bits(seed: int, n: int, device: torch.device | str = "cpu", start: int = 0) -> torch.Tensor:
    """Words start, ..., start + n - 1 of the seed's stream of 32-bit words: (n,) int32 (two's complement)."""
    if not (0 <= start and 0 <= n and start + n <= MAX_WORDS):
        raise ValueError(f"a stream holds 2^31 words; asked for {n} from {start}")
    device = torch.device(device)
    k0, k1 = (_i(as_int32(k)) for k in keys(seed))
    if device.type == "cpu" and n <= _COUNTER.numel():
        x = torch.add(_COUNTER[:n], _i(start)).bitwise_xor_(k0)
    else:
        x = torch.arange(start, start + n, dtype=torch.int32, device=device).bitwise_xor_(k0)
    scratch = torch.empty_like(x)  # in place, one scratch buffer: no new memory per operation
    _shift_xor(x, 16, scratch).mul_(_MULTIPLIERS[0]).bitwise_xor_(k1)
    _shift_xor(x, 15, scratch).mul_(_MULTIPLIERS[1])
    return _shift_xor(x, 16, scratch)


def _poly(x: np.ndarray, coeffs: tuple[float, ...]) -> np.ndarray:
    acc = np.full_like(x, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        acc = acc * x + c  # two NumPy passes: each rounded, never fused
    return acc


def log64(p: np.ndarray) -> np.ndarray:
    """log(p) for float64 p > 0 from correctly rounded operations only (relative error < 1e-15): p = m 2^e
    (frexp: exact), m doubled into [sqrt(1/2), sqrt(2)) when below sqrt(1/2), log(m) = 2 atanh(t) with
    t = (m - 1) / (m + 1), |t| < 0.172, summed to t^29, plus e ln 2 (ln 2 in two parts)."""
    m, e = np.frexp(p)
    low = m < 0.7071067811865476
    m = np.where(low, m * 2.0, m)
    e = (e - low).astype(np.float64)
    t = (m - 1.0) / (m + 1.0)
    series = _poly(t * t, tuple(1.0 / (2 * k + 1) for k in range(15)))
    ln2_hi, ln2_lo = 0.693145751953125, 1.4286068203094173e-06  # ln 2 = hi + lo; e * hi is exact
    return (e * ln2_hi + (e * ln2_lo + 2.0 * t * series))


def ppnd16_lower(p: np.ndarray) -> np.ndarray:
    """|Phi^-1(p)| for float64 p in (0, 1/2] by AS 241 PPND16, from correctly rounded operations only."""
    q = p - 0.5
    out = np.empty_like(p)
    central = np.abs(q) <= 0.425
    r = 0.180625 - q[central] * q[central]
    out[central] = -(q[central] * _poly(r, PPND16["a"]) / _poly(r, PPND16["b"]))
    r = np.sqrt(-log64(p[~central]))
    near = r <= 5.0
    tail = np.empty_like(r)
    tail[near] = _poly(r[near] - 1.6, PPND16["c"]) / _poly(r[near] - 1.6, PPND16["d"])
    tail[~near] = _poly(r[~near] - 5.0, PPND16["e"]) / _poly(r[~near] - 5.0, PPND16["f"])
    out[~central] = tail
    return out


@functools.lru_cache(maxsize=1)
def _table_cpu() -> tuple[torch.Tensor, torch.Tensor]:
    """(T0, T1): |Phi^-1| at the segment ends p_k = 2^(k // 2^10 - 33) (1 + (k % 2^10) / 2^10), k up to
    32 * 2^10 (p = 1/2), as float32, and T1[k] = T0[k + 1] - T0[k] (float32; 0 at p = 1/2, where f is 0)."""
    k = np.arange(BINADES * (1 << SEGMENT_BITS) + 1)
    binade, j = np.divmod(k, 1 << SEGMENT_BITS)
    p = np.ldexp(1.0 + j / float(1 << SEGMENT_BITS), (binade - 33).astype(np.int32))
    t0 = ppnd16_lower(p).astype(np.float32)
    t1 = np.append(t0[1:] - t0[:-1], np.float32(0.0))
    return torch.from_numpy(t0), torch.from_numpy(t1)


_TABLES: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _table(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if device not in _TABLES:
        _TABLES[device] = tuple(t.to(device) for t in _table_cpu())  # type: ignore[assignment]
    return _TABLES[device]


def _normal_from_bits(s: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """N(0, 1) float32 numbers from 32-bit words s (int32), one per word, into `out` (or a new tensor); s is
    overwritten."""
    t0, t1 = _table(s.device)
    a = torch.bitwise_xor(s, torch.bitwise_right_shift(s, 31))  # s, or -1 - s when s < 0
    p = torch.sub(_INT32_MAX, a).to(torch.float32).mul_(_SCALE).add_(_HALF_STEP)  # 1/2 - |u - 1/2|
    raw = p.view(torch.int32)
    segment = torch.bitwise_right_shift(raw, LOW_BITS, out=a).sub_(_FIRST_SEGMENT)  # binade and top fraction bits
    f = raw.bitwise_and_(_FRACTION_LOW).to(torch.float32).mul_(_LOW_SCALE)  # p is spent: its bits are reused
    z = torch.empty_like(f) if out is None else out
    torch.index_select(t1, 0, segment, out=z).mul_(f).add_(t0.index_select(0, segment))
    z.view(torch.int32).bitwise_or_(s.bitwise_and_(_SIGN_BIT))  # |z| >= 0: its sign bit is free (s is spent)
    return z


def normal(seed: int, n: int, device: torch.device | str = "cpu", out: torch.Tensor | None = None) -> torch.Tensor:
    """z ~ N(0, 1)^n, float32 on `device` (into `out`, a contiguous (n,) float32 tensor there, when given): a pure
    function of (seed, n), bitwise the same on every device; the first m numbers of a longer draw are the draw of
    length m. On a CPU in slices of CPU_SLICE (elementwise, so the slices change no bit): a slice's words and
    temporaries stay in the cache."""
    device = torch.device(device)
    if out is None:
        out = torch.empty(n, dtype=torch.float32, device=device)
    elif out.shape != (n,) or out.dtype != torch.float32 or out.device != device or not out.is_contiguous():
        raise ValueError(f"out: expected a contiguous ({n},) float32 tensor on {device}")
    step = CPU_SLICE if device.type == "cpu" else max(n, 1)
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        _normal_from_bits(bits(seed, hi - lo, device, lo), out[lo:hi])
    return out

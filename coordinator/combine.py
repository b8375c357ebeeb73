"""How a round's results become its decision: a pure function of (round kind, results, rule settings), no Ray.

Full rounds average the gradients, localsgd averages parameters, and a stochastic round resolves by its rule:
- argmin: Algorithm 2 as written, the lowest cost wins (ties: the lowest worker, then its first trial);
- notebook: the paper's code, the stale step when some trial beat the current cost, else the biases only;
- elitist: (1 + lambda) selection, argmin's winner only if it beat the current cost, else keep theta;
- es, guided: every cost counts. Each seed i was tried as +E_i and -E_i; its weight is
  w_i = es_lr * (u(-E_i) - u(+E_i)) / n over the round's n seeds, where u is the centered rank of a cost in
  [-1/2, 1/2] over all the round's costs (es_weights rank) or its z-score / 2 (zscore). A seed whose +E trial
  cost less than its -E trial gets w_i > 0 and the step moves towards +E (workers/search.py apply_es).
With trials `shared` every worker scored the same seeds on its shard, and a seed's cost is the
examples-weighted sum of the workers' costs: the cost on the whole minibatch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workers.messages import Result, RoundKind
from workers.noise import trial_seed
from workers.search import subspace_coefficients
from workers.state import SHARED_WORKER, Decision, DecisionKind, cost_rank

RULES = ("argmin", "notebook", "elitist", "es", "guided")
WEIGHTS = ("rank", "zscore", "quadratic")


@dataclass(frozen=True)
class Rules:
    """The settings a round's decision depends on (config keys hybrid.*)."""
    mode: str = "hybrid"  # hybrid | backprop | stale | localsgd | zo
    rule: str = "argmin"  # RULES
    trials: str = "independent"  # independent | shared
    k: int = 10  # evaluations per worker per stochastic round
    n_workers: int = 1  # the job's worker slots (an es decision has one weight per slot and seed)
    assisted: bool = False  # r = 1: a full round sets the gradient, the trials take the step
    es_lr: float = 1.0
    es_weights: str = "rank"  # rank | zscore | quadratic
    job_seed: int = 0  # shared argmin names the winning seed, derived like the workers' (workers/search.py)
    allreduce: bool = False  # cluster.full_rounds allreduce: the workers summed full rounds and averages themselves

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"hybrid.combine: unknown rule {self.rule!r}")
        if self.es_weights not in WEIGHTS:
            raise ValueError(f"hybrid.es_weights: unknown weighting {self.es_weights!r}")

    @property
    def antithetic(self) -> bool:
        return self.rule in ("es", "guided")

    @property
    def seeds_per_worker(self) -> int:
        return self.k // 2 if self.antithetic else self.k


def combine(t: int, kind: RoundKind, results: list[Result], rules: Rules, subspace: int = 0) -> Decision:
    """The decision that ends round t. `subspace`: the gradients guided trials of round t were drawn around
    (the replicas' history length; es_weights quadratic only)."""
    if not results:
        raise RuntimeError(f"round {t}: no worker returned a result")
    if kind == RoundKind.FULL:
        step = DecisionKind.SET_GRAD if rules.assisted else DecisionKind.GRAD
        if rules.allreduce:  # every replica holds the batch-mean gradient already
            return Decision(t, step, reduced=True)
        return Decision(t, step, array=weighted_mean(results, by_examples=False))
    if kind == RoundKind.AVERAGE:
        if rules.allreduce:
            return Decision(t, DecisionKind.PARAMS, reduced=True)
        return Decision(t, DecisionKind.PARAMS, array=weighted_mean(results, by_examples=True))
    if kind == RoundKind.LOCAL:
        return Decision(t, DecisionKind.LOCAL)
    if rules.mode == "stale":
        return Decision(t, DecisionKind.STALE)
    if rules.antithetic and rules.es_weights == "quadratic":
        return Decision(t, DecisionKind.ES, array=quadratic_weights(t, results, rules, subspace))
    if rules.antithetic:
        return Decision(t, DecisionKind.ES, array=es_weights(results, rules), stats=observation_stats(results))
    if rules.trials == "shared":  # argmin over the summed costs; the seed is the round's, the same everywhere
        costs = shared_costs(results, rules.k)
        best = min(range(len(costs)), key=lambda i: (cost_rank(costs[i]), i))
        return Decision(t, DecisionKind.SEED, seed=trial_seed(rules.job_seed, t, SHARED_WORKER, best))
    if rules.rule == "notebook":
        improved = any(r.beats_current for r in results)
        return Decision(t, DecisionKind.STALE if improved else DecisionKind.BIAS_ONLY)
    best_result = min(results, key=lambda r: (cost_rank(r.cost), r.worker))
    if rules.rule == "elitist" and not best_result.beats_current:
        return Decision(t, DecisionKind.KEEP)  # (1 + lambda) selection: the parent survives
    return Decision(t, DecisionKind.SEED, seed=best_result.seed)


def observation_stats(results: list[Result]) -> np.ndarray | None:
    """objective.normalize: the workers' observation statistics summed in float64 in worker order, as float32;
    None when no worker sent any."""
    sent = [r.stats for r in sorted(results, key=lambda r: r.worker) if r.stats]
    if not sent:
        return None
    if len({len(s) for s in sent}) > 1:
        raise ValueError(f"workers sent observation statistics of lengths {sorted({len(s) for s in sent})}")
    total = np.zeros(len(sent[0]))
    for s in sent:
        total += np.asarray(s, dtype=np.float64)
    return total.astype(np.float32)


def round_loss(kind: RoundKind, results: list[Result], rules: Rules) -> float:
    """A stochastic round's loss: the lowest trial cost (summed over the shards for shared trials); nan for the
    stale control, which runs no trials. Other rounds: the examples-weighted mean loss."""
    if kind == RoundKind.STOCHASTIC:
        if rules.mode == "stale" or not results:
            return float("nan")
        if rules.trials == "shared":
            costs = shared_costs(results, rules.k)
        elif rules.antithetic:
            costs = [c for r in results for c in r.costs]
        else:
            costs = [r.cost for r in results]
        return min(costs, key=cost_rank)
    return sum(r.loss_sum for r in results) / max(1, sum(r.examples for r in results))


def shared_costs(results: list[Result], k: int) -> list[float]:
    """Each shared trial's cost on the whole minibatch: sum over workers of (mean cost on the shard * its
    examples) / all examples, in float64 in worker order, rounded to float32."""
    total = sum(r.examples for r in results)
    out = []
    for i in range(k):
        s = 0.0
        for r in sorted(results, key=lambda r: r.worker):
            if len(r.costs) != k:
                raise ValueError(f"worker {r.worker} sent {len(r.costs)} costs, expected {k}")
            s += float(r.costs[i]) * r.examples
        out.append(float(np.float32(s / max(1, total))))
    return out


def _centered(costs: np.ndarray, how: str) -> np.ndarray:
    """u in [-1/2, 1/2]: centered ranks (ties broken by position; nan and inf rank last), or z-scores / 2."""
    n = len(costs)
    finite = np.isfinite(costs)
    if how == "zscore":
        if not finite.any():
            return np.zeros(n)
        fill = np.where(finite, costs, np.max(costs[finite]))  # a non-finite cost counts as the worst finite one
        sd = float(np.std(fill))
        return np.zeros(n) if sd == 0 else (fill - float(np.mean(fill))) / (2.0 * sd)
    order = sorted(range(n), key=lambda i: (cost_rank(float(costs[i])), i))
    ranks = np.empty(n)
    ranks[order] = np.arange(n)
    return ranks / max(1, n - 1) - 0.5 if n > 1 else np.zeros(1)


def es_weights(results: list[Result], rules: Rules) -> np.ndarray:
    """One float32 weight per seed: per worker slot and seed (independent; 0 for a slot that sent nothing) or
    per shared seed. Every cost of the round is ranked together."""
    s = rules.seeds_per_worker
    if rules.trials == "shared":
        costs = np.array(shared_costs(results, 2 * s), dtype=np.float64)
        u = _centered(costs, rules.es_weights)
        return np.asarray(rules.es_lr * (u[1::2] - u[0::2]) / s, dtype=np.float32)
    ordered = sorted(results, key=lambda r: r.worker)
    for r in ordered:
        if len(r.costs) != 2 * s:
            raise ValueError(f"worker {r.worker} sent {len(r.costs)} costs, expected {2 * s} (k antithetic trials)")
        if not 0 <= r.worker < rules.n_workers:
            raise ValueError(f"worker {r.worker} is not one of the job's {rules.n_workers} slots")
    costs = np.array([c for r in ordered for c in r.costs], dtype=np.float64)
    u = _centered(costs, rules.es_weights)
    n = len(ordered) * s
    out = np.zeros(rules.n_workers * s, dtype=np.float64)
    for j, r in enumerate(ordered):
        pair = u[2 * s * j:2 * s * (j + 1)]
        out[r.worker * s:(r.worker + 1) * s] = rules.es_lr * (pair[1::2] - pair[0::2]) / n
    return out.astype(np.float32)


def quadratic_weights(t: int, results: list[Result], rules: Rules, m: int) -> np.ndarray:
    """guided, es_weights quadratic: fit f(base - c*kappa*v) = f0 + a.v + v'Hv/2 by least squares to every cost
    of the round, v = +-zeta of the trial in the gradients' coordinates (workers/search.py direction), take the
    model's minimizer v* (H lifted to positive definite, |v*| at most es_lr times the farthest trial), and
    return the seed weights w of least norm with sum_i w_i zeta_i = v*: the replicas' step -c sum_i w_i E_i
    is then exactly the model's step inside the gradients' span (plus the isotropic parts' w-weighted sum when
    guided_alpha > 0)."""
    s = rules.seeds_per_worker
    shared = rules.trials == "shared"
    if m < 1:  # no gradient yet (cannot happen in hybrid mode, whose first round is full)
        return np.zeros(s if shared else rules.n_workers * s, np.float32)
    if shared:
        slots = list(range(s))
        costs = shared_costs(results, 2 * s)
        seeds = [trial_seed(rules.job_seed, t, SHARED_WORKER, i) for i in range(s)]
    else:
        ordered = sorted(results, key=lambda r: r.worker)
        for r in ordered:
            if len(r.costs) != 2 * s:
                raise ValueError(f"worker {r.worker} sent {len(r.costs)} costs, expected {2 * s}")
        slots = [r.worker * s + i for r in ordered for i in range(s)]
        costs = [c for r in ordered for c in r.costs]
        seeds = [trial_seed(rules.job_seed, t, r.worker, i) for r in ordered for i in range(s)]
    zeta = np.stack([subspace_coefficients(seed, m).astype(np.float64) for seed in seeds])  # (n, m)
    v = np.repeat(zeta, 2, axis=0) * np.tile([1.0, -1.0], len(seeds))[:, None]  # +zeta, -zeta, ...
    f = np.array(costs, dtype=np.float64)
    keep = np.isfinite(f)
    iu = np.triu_indices(m)
    features = np.hstack([np.ones((len(v), 1)), v, v[:, iu[0]] * v[:, iu[1]]])
    coef = np.linalg.lstsq(features[keep], f[keep], rcond=None)[0]
    a = coef[1:1 + m]
    h = np.zeros((m, m))
    h[iu] = coef[1 + m:]
    h = h + h.T  # the diagonal doubled: d2/dv_a^2 of q_aa v_a^2 is 2 q_aa
    eig = np.linalg.eigvalsh(h)
    lift = max(0.0, -float(eig[0])) + 1e-6 * max(1.0, float(np.abs(eig).max()))
    step = -np.linalg.solve(h + lift * np.eye(m), a)
    radius = rules.es_lr * float(np.sqrt((v ** 2).sum(1)).max())
    norm = float(np.sqrt(step @ step))
    if norm > radius:
        step *= radius / norm
    w = np.linalg.lstsq(zeta.T, step, rcond=None)[0]  # the least-norm w with zeta' w = step
    out = np.zeros(s if shared else rules.n_workers * s, dtype=np.float64)
    out[slots] = w
    return out.astype(np.float32)


def weighted_mean(results: list[Result], by_examples: bool) -> np.ndarray:
    """Full round: sum of the workers' summed gradients / examples = the batch-mean gradient.
    Average round: the workers' parameters weighted by their shard sizes."""
    if by_examples and len(results) == 1:  # one worker's parameters are their own average, to the bit
        assert results[0].array is not None
        return np.array(results[0].array, dtype=np.float32, copy=True)
    examples = np.float32(sum(r.examples for r in results))
    parts = []
    for r in results:
        assert r.array is not None
        parts.append(r.array * np.float32(r.examples) if by_examples else r.array)
    if len(parts) == 1:
        return np.divide(parts[0], examples, dtype=np.float32)  # a new array: the result may be a shared view
    total = np.add(parts[0], parts[1], dtype=np.float32)
    for part in parts[2:]:
        total += part
    total /= examples  # in place: the same float32 division as total / examples, one copy less
    return total

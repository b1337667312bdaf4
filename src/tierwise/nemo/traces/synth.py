"""Synthetic key-value traces calibrated to the Twitter clusters Nemo is evaluated on (14, 29, 34, 52).

Per cluster: a finite key space whose popularity is Zipf(alpha) (inverse-CDF sampling with `searchsorted` on the
cumulative weights; rank -> key through a random permutation), one constant key size, lognormal value sizes fixed
per key (mean = the cluster's, sigma = the tail knob) with key + value clipped to the 2048 B object limit, the
cluster's op mix and TTL on writes, and a share of one-hit-wonder keys. Clusters are merged by request rate with
separate key namespaces. `twitter-merged` downscales cluster 14's sizes 2x and 29's 3x as the paper does, then
one global factor g scales all sizes so the request-weighted mean object (key + value) is 246 B; g is solved on
the drawn sizes and the Zipf probabilities, so a trace of any length lands on the target.

Generation is vectorised in blocks of `_BLOCK` requests, each with its own seeded generator, so a trace is fixed by
(profile, requests, seed) whatever chunk size the consumer asks for, and memory is O(keys + block).

Timestamps: requests arrive at the profile's aggregate request rate, the sum of its clusters' published rates
(`Profile.rate_qps`: 44,190 requests/s for twitter-merged), evenly: request i has `time` = floor(i / rate_qps)
seconds. A constant rate is the project's choice (the published statistics give mean rates only); replaying with
the trace's timestamps then equals `--rate rate_qps`, and the time column costs no random draws (a trace's other
columns are the same as before the column existed).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator

import numpy as np

from tierwise.common.errors import TierwiseError
from tierwise.common.units import parse_count
from tierwise.nemo.traces.reader import TraceReader
from tierwise.nemo.traces.request import REQUEST_DTYPE, Op

_BLOCK = 1 << 17
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


@dataclass(frozen=True)
class ClusterProfile:
    """One Twitter cluster's published statistics (twitter/cache-trace `stat/2020Mar.md`; sizes are means)."""

    name: str
    key_size: float
    value_mean: float
    alpha: float
    op_mix: tuple[float, float, float]  # shares of GET, SET, DELETE (normalised)
    rate: float  # request rate (kqps): the merge weight
    mean_freq: float  # requests per object: sets the key-space size
    one_hit: float  # share of objects requested exactly once
    ttl: int  # seconds, carried by writes
    downscale: float = 1.0  # sizes divided by this before the global calibration
    value_sigma: float = 0.6  # lognormal sigma of value sizes (the tail)


@dataclass(frozen=True)
class Profile:
    name: str
    clusters: tuple[ClusterProfile, ...]
    mean_object: float | None = None  # target request-weighted mean key + value (B); None keeps the sizes
    max_object: int = 2048  # largest key + value (CacheLib's small-item limit, the paper's)

    @property
    def rate_qps(self) -> int:
        """Aggregate request rate (requests/s): the clusters' published rates summed; sets the timestamps."""
        return max(1, round(1000 * sum(c.rate for c in self.clusters)))


# Op mixes of the table in design/nemo.md §6: gets/get -> GET; set/add/cas -> SET; delete -> DELETE.
C14 = ClusterProfile("14", 96, 414, 1.2959, (0.65, 0.13, 0.22), 5.81, 35.4, 0.1094, 86400, downscale=2)
C29 = ClusterProfile("29", 36, 799, 1.2323, (0.86, 0.13, 0.0), 10.73, 22.5, 0.2304, 5400, downscale=3)
C34 = ClusterProfile("34", 33, 322, 1.1401, (0.94, 0.06, 0.0), 3.40, 49.4, 0.0026, 37800)
C52 = ClusterProfile("52", 20, 273, 1.2117, (0.93, 0.06, 0.0), 24.25, 32.6, 0.1936, 86400)

PROFILES: dict[str, Profile] = {
    "twitter-merged": Profile("twitter-merged", (C14, C29, C34, C52), mean_object=246.0),
    **{f"twitter-{c.name}": Profile(f"twitter-{c.name}", (replace(c, downscale=1.0),)) for c in (C14, C29, C34, C52)},
}


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection on uint64, so distinct inputs give distinct, well-spread key ids."""
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _MIX1
        x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


@dataclass
class _Cluster:
    """A cluster's generated tables: Zipf CDF over ranks, rank -> key permutation, per-key value-size units."""

    profile: ClusterProfile
    tag: int
    weight: float  # share of requests
    keys: int  # Zipf key-space size
    one_hit_share: float  # share of this cluster's requests that go to one-hit-wonder keys
    cdf: np.ndarray
    perm: np.ndarray
    units: np.ndarray  # lognormal, mean 1: value = value_mean / downscale * g * unit
    p_key: np.ndarray  # request probability of each key (rank r's probability belongs to key perm[r])
    key_size: int = 0
    value_scale: float = 0.0
    op_cdf: np.ndarray = field(default_factory=lambda: np.zeros(3))
    next_one_hit: int = 0

    def values(self, units: np.ndarray, max_object: int) -> np.ndarray:
        v = np.rint(units * self.value_scale)
        return np.clip(v, 1, max(1, max_object - self.key_size)).astype(np.uint32)


def _zipf_cdf(n: int, alpha: float) -> np.ndarray:
    w = np.arange(1, n + 1, dtype=np.float64) ** -alpha
    cdf = np.cumsum(w)
    return cdf / cdf[-1]


def _one_hit_share(p: np.ndarray, requests: float, objects_share: float) -> float:
    """Share q of requests that go to fresh keys so that keys requested once are `objects_share` of all keys.

    After r Zipf draws the expected distinct keys are D = sum(1 - exp(-r p_i)) and those seen once
    S = sum(r p_i exp(-r p_i)); the Zipf tail alone may already give S / D >= h (then q = 0); otherwise add O
    fresh keys with (S + O) / (D + O) = h."""
    q = 0.0
    for _ in range(3):  # fixed point: the Zipf part gets (1 - q) of the requests
        rp = requests * (1 - q) * p
        distinct = float(np.sum(-np.expm1(-rp)))
        once = float(np.sum(rp * np.exp(-rp)))
        fresh = max(0.0, (objects_share * distinct - once) / (1 - objects_share))
        q = min(0.5, fresh / requests)
    return q


class SyntheticTrace(TraceReader):
    """`requests` requests of `profile`, deterministic by `seed`; iterate for REQUEST_DTYPE chunks.

    `calibration` describes what was fitted: the global size factor, per-cluster key size, key-space size,
    one-hit request share, and the expected request-weighted mean object."""

    format = "synth"

    def __init__(self, profile: str | Profile = "twitter-merged", requests: int = 1_000_000, seed: int = 0, **kw):
        if isinstance(profile, str):
            if profile not in PROFILES:
                raise TierwiseError(f"unknown synthetic profile {profile!r}; available: {', '.join(PROFILES)}")
            profile = PROFILES[profile]
        if requests <= 0:
            raise TierwiseError(f"number of synthetic requests must be positive, got {requests}")
        super().__init__(f"synth:{profile.name}:{requests}:{seed}", **kw)
        self.profile = profile
        self.total = int(requests)
        self.seed = int(seed)
        self._clusters = self._build()
        self.calibration = self._calibrate()

    # ---- set-up ------------------------------------------------------------------------------------------------
    def _build(self) -> list[_Cluster]:
        rates = np.array([c.rate for c in self.profile.clusters], dtype=np.float64)
        weights = rates / rates.sum()
        out = []
        for tag, (c, w) in enumerate(zip(self.profile.clusters, weights)):
            rng = np.random.default_rng([self.seed, 1, tag])
            expected = self.total * w
            n = max(1, int(round(expected / c.mean_freq)))
            cdf = _zipf_cdf(n, c.alpha)
            sigma = c.value_sigma
            mix = np.array(c.op_mix, dtype=np.float64)
            perm = rng.permutation(n)
            p_key = np.empty(n)
            p_key[perm] = np.diff(cdf, prepend=0.0)
            out.append(_Cluster(profile=c, tag=tag + 1, weight=float(w), keys=n,
                                one_hit_share=_one_hit_share(p_key, expected, c.one_hit), cdf=cdf, perm=perm,
                                units=rng.lognormal(-sigma * sigma / 2, sigma, n), p_key=p_key,
                                op_cdf=np.cumsum(mix / mix.sum())))
        return out

    def _scale(self, g: float) -> None:
        for cl in self._clusters:
            c = cl.profile
            cl.key_size = max(1, int(round(c.key_size / c.downscale * g)))
            cl.value_scale = c.value_mean / c.downscale * g

    def _expected_mean_object(self) -> float:
        total = 0.0
        for cl in self._clusters:
            obj = cl.key_size + cl.values(cl.units, self.profile.max_object).astype(np.float64)
            zipf_mean = float((cl.p_key * obj).sum())  # not `@`: BLAS threads spin on a busy machine
            total += cl.weight * ((1 - cl.one_hit_share) * zipf_mean + cl.one_hit_share * float(obj.mean()))
        return total

    def _calibrate(self) -> dict:
        target = self.profile.mean_object
        g = 1.0
        if target is not None:
            lo, hi = 1e-3, 64.0
            self._scale(hi)
            if self._expected_mean_object() < target:
                raise TierwiseError(f"profile {self.profile.name}: mean object {target} B is unreachable under the "
                                    f"{self.profile.max_object} B object limit")
            for _ in range(40):
                g = (lo + hi) / 2
                self._scale(g)
                lo, hi = (g, hi) if self._expected_mean_object() < target else (lo, g)
            g = hi
        self._scale(g)
        return {
            "profile": self.profile.name, "requests": self.total, "seed": self.seed, "global_size_factor": g,
            "expected_mean_object": self._expected_mean_object(),
            "clusters": [{"cluster": cl.profile.name, "request_share": cl.weight, "key_size": cl.key_size,
                          "value_mean_target": cl.value_scale, "zipf_alpha": cl.profile.alpha,
                          "zipf_keys": cl.keys, "one_hit_request_share": cl.one_hit_share}
                         for cl in self._clusters],
        }

    # ---- generation --------------------------------------------------------------------------------------------
    def _blocks(self) -> Iterator[np.ndarray]:
        for cl in self._clusters:
            cl.next_one_hit = 0
        label_cdf = np.cumsum([cl.weight for cl in self._clusters])
        label_cdf[-1] = 1.0
        for b, start in enumerate(range(0, self.total, _BLOCK)):
            n = min(_BLOCK, self.total - start)
            rng = np.random.default_rng([self.seed, 2, b])
            labels = np.searchsorted(label_cdf, rng.random(n), side="right")
            out = np.empty(n, dtype=REQUEST_DTYPE)
            for i, cl in enumerate(self._clusters):
                where = np.flatnonzero(labels == i)
                if len(where):
                    out[where] = self._cluster_requests(cl, len(where), rng)
            out["time"] = np.arange(start, start + n, dtype=np.int64) // self.profile.rate_qps
            yield out

    def _cluster_requests(self, cl: _Cluster, m: int, rng: np.random.Generator) -> np.ndarray:
        out = np.empty(m, dtype=REQUEST_DTYPE)
        ranks = np.minimum(np.searchsorted(cl.cdf, rng.random(m), side="right"), cl.keys - 1)
        local = cl.perm[ranks].astype(np.uint64)
        values = cl.values(cl.units[local], self.profile.max_object)
        one = np.flatnonzero(rng.random(m) < cl.one_hit_share)
        if len(one):  # fresh keys beyond the Zipf key space, each used once
            local[one] = np.uint64(cl.keys + cl.next_one_hit) + np.arange(len(one), dtype=np.uint64)
            cl.next_one_hit += len(one)
            sigma = cl.profile.value_sigma
            values[one] = cl.values(rng.lognormal(-sigma * sigma / 2, sigma, len(one)), self.profile.max_object)
        ops = np.searchsorted(cl.op_cdf, rng.random(m), side="right").clip(0, 2).astype(np.uint8)
        out["op"] = ops
        out["key"] = mix64((np.uint64(cl.tag) << np.uint64(56)) | local)
        out["key_size"] = cl.key_size
        out["value_size"] = values
        out["ttl"] = np.where(ops == Op.SET, cl.profile.ttl, 0)
        out["time"] = 0  # set per block (`_blocks`)
        return out


def parse_synth_spec(spec: str) -> tuple[str, int, int]:
    """`synth:PROFILE[:REQUESTS[:SEED]]` -> (profile, requests, seed); requests default to 1M, seed to 0."""
    parts = spec.split(":")
    if parts[0] != "synth" or len(parts) < 2 or len(parts) > 4 or not parts[1]:
        raise TierwiseError(f"bad synthetic trace spec {spec!r}; expected synth:PROFILE[:REQUESTS[:SEED]], "
                            f"profiles: {', '.join(PROFILES)}")
    requests = parse_count(parts[2]) if len(parts) > 2 and parts[2] else 1_000_000
    try:
        seed = int(parts[3]) if len(parts) > 3 else 0
    except ValueError:
        raise TierwiseError(f"bad seed in {spec!r}: must be an integer") from None
    return parts[1], requests, seed

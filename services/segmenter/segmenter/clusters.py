"""Behaviour clusters learned online, one profile update at a time (pure: no I/O).

`features(profile)` is scaled by river's `preprocessing.StandardScaler` (learned online), then one
of two online clusterers learns from it:

- `sequential` (default): a river `base.Clusterer` doing sequential k-means (MacQueen): each
  update moves the nearest centre towards the point by 1/n of the points it has taken, floored
  at `min_rate` so the centres keep following a population that changes. Centres start on the
  first `k` distinct points far enough apart (k-means++-like on a small buffer).
- `river-kmeans`: river's `cluster.KMeans` (a fixed step `halflife` towards every point).

`bench/segment_clusters.py` compares both (and river's DBSTREAM) with scikit-learn's batch KMeans
on the final profiles of the full Online Retail replay; the default is what it chose.

The whole model pickles to a few KB, so the service snapshots it with every applied batch, in the
same transaction as the applied event ids: a restart resumes exactly where the database is.
"""

from __future__ import annotations

import copy
import math
import pickle
import random
from collections.abc import Mapping
from typing import Any

from river import base, cluster, preprocessing

STATE_VERSION = 1


class SequentialKMeans(base.Clusterer):
    """MacQueen's online k-means with a floor on the step, as a river clusterer."""

    def __init__(self, n_clusters: int = 6, min_rate: float = 0.001, buffer: int = 200, seed: int = 42) -> None:
        self.n_clusters = n_clusters
        self.min_rate = min_rate
        self.buffer = buffer
        self.seed = seed
        self.centers: dict[int, dict[str, float]] = {}
        self.counts: dict[int, int] = {}
        self._pending: list[dict[str, float]] = []

    @staticmethod
    def _distance(a: Mapping[str, float], b: Mapping[str, float]) -> float:
        if a.keys() == b.keys():  # the usual case: the same features every time (C-speed math.dist)
            return math.dist(list(a.values()), [b[k] for k in a])
        keys = a.keys() | b.keys()
        return math.sqrt(sum((a.get(k, 0.0) - b.get(k, 0.0)) ** 2 for k in keys))

    def _seed_centers(self) -> None:
        rng = random.Random(self.seed)
        points = self._pending
        chosen = [points[rng.randrange(len(points))]]
        while len(chosen) < self.n_clusters:
            weights = [min(self._distance(p, c) for c in chosen) ** 2 for p in points]
            total = sum(weights)
            if total <= 0:
                break
            pick = rng.random() * total
            for point, weight in zip(points, weights, strict=True):
                pick -= weight
                if pick <= 0:
                    chosen.append(point)
                    break
        self.centers = {i: dict(c) for i, c in enumerate(chosen)}
        self.counts = dict.fromkeys(self.centers, 1)
        pending, self._pending = self._pending, []
        for point in pending:
            self.learn_one(point)

    def learn_one(self, x: dict[str, float]) -> None:  # type: ignore[override]
        if len(self.centers) < self.n_clusters and not self.counts:
            self._pending.append(dict(x))
            if len(self._pending) >= self.buffer:
                self._seed_centers()
            return
        self.learn_towards(x, self.predict_one(x))

    def seeding(self) -> bool:
        return not self.counts

    def learn_towards(self, x: Mapping[str, float], nearest: int) -> None:
        """Move centre `nearest` (the caller found it) towards `x`."""
        self.counts[nearest] += 1
        rate = max(1.0 / self.counts[nearest], self.min_rate)
        center = self.centers[nearest]
        for key, value in x.items():
            held = center.get(key, 0.0)
            center[key] = held + rate * (value - held)

    def predict_one(self, x: dict[str, float]) -> int:  # type: ignore[override]
        if not self.centers:
            return 0
        return min(self.centers, key=lambda c: (self._distance(x, self.centers[c]), c))


class OnlineClusters:
    """StandardScaler → clusterer, with distances to every centre for the sticky assignment."""

    def __init__(self, *, n_clusters: int = 6, algorithm: str = "sequential", seed: int = 42, halflife: float = 0.05) -> None:
        self.n_clusters = n_clusters
        self.algorithm = algorithm
        self.scaler = preprocessing.StandardScaler()
        self.model: base.Clusterer
        if algorithm == "sequential":
            self.model = SequentialKMeans(n_clusters=n_clusters, seed=seed)
        elif algorithm == "river-kmeans":
            self.model = cluster.KMeans(n_clusters=n_clusters, halflife=halflife, sigma=1.0, seed=seed)
        else:
            raise ValueError(f"unknown clustering algorithm {algorithm!r}")
        self.learned = 0

    def centers(self) -> dict[int, dict[str, float]]:
        return {int(k): v for k, v in getattr(self.model, "centers", {}).items()}

    def learn_one(self, x: dict[str, float]) -> dict[int, float]:
        """Learn from one profile update; return its distance to every centre (empty while seeding)."""
        self.scaler.learn_one(x)
        scaled = self.scaler.transform_one(x)
        self.learned += 1
        model = self.model
        if isinstance(model, SequentialKMeans) and not model.seeding():
            # one pass over the centres: the distances before the step decide both the step and the answer
            distances = self.distances(scaled)
            model.learn_towards(scaled, min(distances, key=lambda c: (distances[c], c)))
            return distances
        model.learn_one(scaled)
        return self.distances(scaled)

    def scale(self, x: dict[str, float]) -> dict[str, float]:
        return dict(self.scaler.transform_one(x))

    def distances(self, scaled: Mapping[str, float]) -> dict[int, float]:
        """Euclidean distance to every centre (every profile update asks: one pass, C-speed `math.dist`
        on the values whenever a centre has the point's features, the usual case)."""
        centers: dict[Any, dict[str, float]] = getattr(self.model, "centers", {})
        keys = scaled.keys()
        point = list(scaled.values())
        dist, fallback = math.dist, SequentialKMeans._distance
        return {int(c): dist(point, [center[k] for k in keys]) if center.keys() == keys else fallback(scaled, center)
                for c, center in centers.items()}

    def predict_one(self, x: dict[str, float]) -> int | None:
        distances = self.distances(self.scale(x))
        return min(distances, key=lambda c: (distances[c], c)) if distances else None

    def copy(self) -> OnlineClusters:
        return copy.deepcopy(self)

    def to_state(self) -> bytes:
        return pickle.dumps({"state_version": STATE_VERSION, "model": self}, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def from_state(state: bytes) -> OnlineClusters:
        data: dict[str, Any] = pickle.loads(state)  # our own snapshot, from our own database
        if data.get("state_version") != STATE_VERSION:
            raise ValueError(f"unknown cluster state version {data.get('state_version')!r}")
        model: OnlineClusters = data["model"]
        return model

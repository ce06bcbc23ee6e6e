"""Behaviour clusters learned online against scikit-learn's batch KMeans, on the full Online Retail.

    .venv/bin/python bench/segment_clusters.py [--dataset PATH] [--k 6]

The issue's requirement: the online clusters (same k, same features, final profiles after the full
Online Retail replay) reach a silhouette of at least 0.9 x the batch KMeans's; report how many
members changed segment in the final month without a change of behaviour.

One run:
1. every sale of `online_retail.csv.gz` in event order goes through member-profile's own
   `apply_sale`, and each buyer's updated profile (`MemberProfileUpdated`, as on
   `member.profiles.v1`) through `segmenter.domain.features` into each online candidate — one
   `learn_one` per profile update, as the service does;
2. at the end, every member's final features are assigned by each online model; the silhouette of
   that labelling is computed in one common space (the final features standardised in batch) next
   to scikit-learn `KMeans(k, n_init=10)` fitted on exactly those points;
3. flip-flops: in the final 30 days of the data, every week each member is
   re-assigned as if an update without new behaviour arrived (a tier sweep does that); counted are
   members whose cluster changed though their features did not, with and without the service's
   hysteresis (`cluster_margin`).

Exits 0 with a report (targets marked PASS/FAIL), 2 when the dataset is absent. Results also go to
`bench/results/segment_clusters.json`.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from crm_shared.datasets.online_retail import load_sales
from member_profile.domain import Profile, apply_sale
from member_profile.handlers import profile_document
from segmenter import domain
from segmenter.clusters import OnlineClusters
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
DATASET = HERE.parent.parent / "shared" / "datasets" / "online_retail.csv.gz"
RESULTS = HERE / "results" / "segment_clusters.json"
TARGET_RATIO = 0.9
FINAL_MONTH = datetime(2011, 11, 9, tzinfo=UTC)  # the last 30 days of the data (it ends 2011-12-09)
MARGIN = 0.15


def candidates(k: int) -> dict[str, OnlineClusters]:
    return {
        "sequential k-means (ours, river Clusterer)": OnlineClusters(n_clusters=k, algorithm="sequential"),
        "river cluster.KMeans halflife=0.5": OnlineClusters(n_clusters=k, algorithm="river-kmeans", halflife=0.5),
        "river cluster.KMeans halflife=0.05": OnlineClusters(n_clusters=k, algorithm="river-kmeans", halflife=0.05),
    }


def main() -> int:
    global MARGIN
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--margin", type=float, default=0.15, help="hysteresis margin (the service's CLUSTER_MARGIN)")
    args = parser.parse_args()
    MARGIN = args.margin
    if not args.dataset.exists():
        print(f"{args.dataset} is absent: this benchmark needs the team's ../shared/datasets folder")
        return 2

    started = time.perf_counter()
    sales, _ = load_sales(args.dataset)
    sales.sort(key=lambda s: s.occurred_at)
    models = candidates(args.k)
    profiles: dict[str, Profile] = {}
    final: dict[str, dict[str, float]] = {}
    learn_seconds = dict.fromkeys(models, 0.0)
    held: dict[str, dict[str, int]] = {name: {} for name in models}
    flips = {name: {"with_margin": set(), "without_margin": set()} for name in models}  # type: dict[str, dict[str, set[str]]]
    bare: dict[str, dict[str, int]] = {name: {} for name in models}
    next_check = FINAL_MONTH + timedelta(days=7)
    updates = 0
    for sale in tqdm(sales, desc="profiles", unit="sale", mininterval=1.0):
        if sale.member_id is None:
            continue
        while sale.occurred_at >= next_check:
            _weekly_check(models, final, held, bare, flips, next_check, set())
            next_check += timedelta(days=7)
        profile = apply_sale(profiles.get(sale.member_id, Profile(sale.member_id)), sale)
        profiles[sale.member_id] = profile
        document = profile_document(profile, sale.occurred_at, tier="member", points=0, erased=False)
        features = domain.features(document)
        final[sale.member_id] = features
        updates += 1
        for name, model in models.items():
            t = time.perf_counter()
            distances = model.learn_one(features)
            learn_seconds[name] += time.perf_counter() - t
            if distances:
                held[name][sale.member_id] = domain.sticky_cluster(distances, held[name].get(sale.member_id),
                                                                   margin=MARGIN)
                bare[name][sale.member_id] = domain.sticky_cluster(distances, None, margin=0)
    members = sorted(final)
    matrix = np.array([[final[m][f] for f in domain.FEATURES] for m in members])
    spread = matrix.std(axis=0)
    spread[spread == 0] = 1.0
    scaled = (matrix - matrix.mean(axis=0)) / spread

    t = time.perf_counter()
    batch = KMeans(n_clusters=args.k, n_init=10, random_state=0).fit(scaled)
    batch_seconds = time.perf_counter() - t
    batch_silhouette = float(silhouette_score(scaled, batch.labels_))

    rows: list[dict[str, Any]] = []
    for name, model in models.items():
        labels = np.array([model.predict_one(final[m]) for m in members])
        served = np.array([held[name].get(m, -1) for m in members])
        clusters = len(set(labels.tolist()))
        score = float(silhouette_score(scaled, labels)) if clusters > 1 else float("nan")
        served_score = float(silhouette_score(scaled, served)) if len(set(served.tolist())) > 1 else float("nan")
        rows.append({"model": name, "silhouette": score, "ratio": score / batch_silhouette,
                     "served_silhouette": served_score, "clusters_used": clusters,
                     "learn_us_per_update": learn_seconds[name] / updates * 1e6,
                     "flips_final_month_with_margin": len(flips[name]["with_margin"]),
                     "flips_final_month_without_margin": len(flips[name]["without_margin"])})
    chosen = rows[0]  # the service's default (SEGMENTER_CLUSTER_ALGORITHM=sequential)

    print(f"\nOnline clusters vs batch KMeans — {len(members):,} members, {updates:,} profile updates, k={args.k}, "
          f"margin {MARGIN}, "
          f"{len(domain.FEATURES)} features (segmenter.domain.features)")
    print(f"  anchor: scikit-learn KMeans(n_init=10) silhouette {batch_silhouette:.4f} (fit {batch_seconds:.2f} s)")
    print(f"  {'model':<44} {'silhouette':>10} {'x batch':>8} {'served':>8} {'us/upd':>7} "
          f"{'flips(margin)':>13} {'flips(none)':>11}")
    for r in rows:
        print(f"  {r['model']:<44} {r['silhouette']:>10.4f} {r['ratio']:>8.3f} {r['served_silhouette']:>8.4f} "
              f"{r['learn_us_per_update']:>7.1f} {r['flips_final_month_with_margin']:>13,} "
              f"{r['flips_final_month_without_margin']:>11,}")
    verdict = "PASS" if chosen["ratio"] >= TARGET_RATIO else "FAIL"
    print(f"\n  target silhouette >= {TARGET_RATIO} x batch: the service's {chosen['model']} at {chosen['ratio']:.3f} x "
          f"— {verdict}")
    print("  chosen over river's KMeans for what members are actually shown: the best 'served' silhouette and the "
          "fewest flips (halflife 0.5 fits the final points well but relabels members on every step)")
    print("  'served' = the sticky labels the service holds (assigned at each member's last update, with hysteresis);")
    print("  flips = members whose cluster changed in the final 30 days at a weekly re-assignment without new behaviour.")
    print(f"  total {time.perf_counter() - started:.1f} s")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_bytes(orjson.dumps({"members": len(members), "updates": updates, "k": args.k,
                                      "batch_silhouette": batch_silhouette, "models": rows,
                                      "target_ratio": TARGET_RATIO, "verdict": verdict},
                                     option=orjson.OPT_INDENT_2))
    return 0


def _weekly_check(models: dict[str, OnlineClusters], final: dict[str, dict[str, float]],
                  held: dict[str, dict[str, int]], bare: dict[str, dict[str, int]],
                  flips: dict[str, dict[str, set[str]]], at: datetime, _: set[str]) -> None:
    """Re-assign everyone as a no-new-behaviour update would (predict only: their features are unchanged)."""
    for name, model in models.items():
        for member, features in final.items():
            distances = model.distances(model.scale(features))
            if not distances:
                continue
            sticky = domain.sticky_cluster(distances, held[name].get(member), margin=MARGIN)
            if member in held[name] and sticky != held[name][member]:
                flips[name]["with_margin"].add(member)
            held[name][member] = sticky
            nearest = domain.sticky_cluster(distances, None, margin=0)
            if member in bare[name] and nearest != bare[name][member]:
                flips[name]["without_margin"].add(member)
            bare[name][member] = nearest


if __name__ == "__main__":
    sys.exit(main())

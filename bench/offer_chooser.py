"""Which offer to make: the notifier's online chooser (river, epsilon-greedy) beside random choice.

    .venv/bin/python bench/offer_chooser.py [--arms 8] [--epsilon 0.1] [--passes 1]

A replay simulation on Complete Journey (transactions sample + products). Offers are the `--arms`
product categories bought by the most households (beyond those nearly everyone buys). For each
household: features = its share of lines per arm category and its visits in weeks 1–26; the offer
"is redeemed" when the household buys that category in weeks 27–53. Every arm's outcome is known
for every household, so each policy is scored on the same outcomes (no off-policy correction
needed). Households come in a fixed random order, once (`--passes` to repeat the stream); the chooser
picks, is scored, and learns from the outcome of what it picked only, as it would live.

Anchors in the same run: random choice, the single most-redeemed category for everyone (a
non-personalised campaign), and the oracle (any arm redeemed). Caveat: the data records purchases,
not responses to offers, so this measures "offer what they will buy", not the causal uplift.
Saves `bench/results/offer_chooser.json`.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "datasets"
RESULTS = HERE / "results" / "offer_chooser.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", type=int, default=8)
    parser.add_argument("--epsilon", type=float, default=0.05)
    parser.add_argument("--passes", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    args = parser.parse_args()
    import pandas as pd
    from notifier.chooser import OfferChooser, features

    transactions, products = DATA / "completejourney_transactions_sample.csv.gz", DATA / "completejourney_products.csv.gz"
    if not transactions.exists() or not products.exists():
        print(f"absent: {transactions} / {products}: this bench needs the team's ../shared/datasets", file=sys.stderr)
        return 2
    lines = pd.read_csv(transactions, dtype=str, usecols=["household_id", "basket_id", "product_id", "week"])
    categories = pd.read_csv(products, dtype=str, usecols=["product_id", "product_category"])
    lines = lines.merge(categories, on="product_id", how="left").dropna(subset=["product_category"])
    lines["week"] = lines["week"].astype(int)
    before, after = lines[lines["week"] <= 26], lines[lines["week"] > 26]
    households = sorted(set(before["household_id"]) & set(after["household_id"]))
    reach = after.groupby("product_category")["household_id"].nunique().sort_values(ascending=False)
    arms = [c for c, n in reach.items() if n < 0.5 * len(households)][: args.arms]

    shares: dict[str, dict[str, float]] = defaultdict(dict)
    counts = before[before["product_category"].isin(arms)].groupby(["household_id", "product_category"]).size()
    totals = before.groupby("household_id").size()
    for (household, category), n in counts.items():
        shares[household][category] = n / totals[household]
    visits = before.groupby("household_id")["basket_id"].nunique()
    bought_after = after[after["product_category"].isin(arms)].groupby("household_id")["product_category"].agg(set)
    outcomes = {h: {a: a in bought_after.get(h, set()) for a in arms} for h in households}

    rng = random.Random(11)
    order = households[:]
    rng.shuffle(order)
    chooser = OfferChooser(arms, epsilon=args.epsilon, learning_rate=args.learning_rate, rng=random.Random(12))
    random_pick = random.Random(13)
    popular = Counter(a for h in households for a, ok in outcomes[h].items() if ok).most_common(1)[0][0]
    score: Counter[str] = Counter()
    stream = [h for _ in range(args.passes) for h in order]
    last_pass_start = len(stream) - len(order)
    for i, household in enumerate(stream):
        x = features({a: shares[household].get(a, 0.0) for a in arms}, int(visits.get(household, 0)))
        arm = chooser.choose(x)
        redeemed = outcomes[household][arm]
        chooser.learn_one(x, arm, redeemed)
        if i >= last_pass_start:
            score["chooser"] += redeemed
            score["random"] += outcomes[household][random_pick.choice(arms)]
            score["popular"] += outcomes[household][popular]
            score["oracle"] += any(outcomes[household].values())
    n = len(order)
    rates = {k: round(v / n, 4) for k, v in score.items()}
    print(f"{n:,} households (bought in both halves of 2017 in the sample); offers = {len(arms)} categories: {arms}")
    print(f"redemption rate, {'last of ' + str(args.passes) + ' passes' if args.passes > 1 else 'one online pass'}:")
    for name in ("chooser", "random", "popular", "oracle"):
        label = {"chooser": f"river chooser (eps {args.epsilon})", "random": "random choice",
                 "popular": f"most-redeemed for all ({popular})", "oracle": "oracle (any arm redeemed)"}[name]
        print(f"  {label:<45} {rates[name]:.1%}")
    print(f"chooser / random = {rates['chooser'] / rates['random']:.2f}x")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"run_at": datetime.now(UTC).isoformat(timespec="seconds"), "households": n,
                                   "arms": arms, "epsilon": args.epsilon, "passes": args.passes,
                                   "learning_rate": args.learning_rate,
                                   "redemption_rate": rates}, indent=2) + "\n")
    print(f"saved {RESULTS.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

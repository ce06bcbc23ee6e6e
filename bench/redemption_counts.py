"""Redemption counting on Complete Journey: the notifier's rule beside the coupon redemptions in the data.

    .venv/bin/python bench/redemption_counts.py

Every (campaign, targeted household) of `completejourney_campaigns` becomes an offer as the notifier
records one: products = the campaign's coupon products (`completejourney_coupons`), valid over the
campaign's dates (`completejourney_campaign_descriptions`). Each basket of the transactions sample
is a sale; `notifier.domain.redeems` decides whether it redeems an open offer of its household,
counted two ways:

- `with code`: the offered product is on the line AND the line carries a coupon discount (the issue's
  "explicit offer code on the sale line");
- `product only`: the offered product bought inside the window, code or not (what the notifier can
  see when tills send no offer code).

Beside them: the campaign's rows in `completejourney_coupon_redemptions`. The transactions file is the
package's 75,000-row random sample of the full year, so our counts are a fraction of the data's; what
must hold is the proportion across campaigns (printed: Pearson and Spearman correlation of the
`with code` counts with the data's). Saves `bench/results/redemption_counts.json`.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "datasets"
RESULTS = HERE / "results" / "redemption_counts.json"


def main() -> int:
    import numpy as np
    import pandas as pd
    from notifier.domain import redeems

    files = {name: DATA / f"completejourney_{name}.csv.gz" for name in
             ("campaigns", "campaign_descriptions", "coupons", "coupon_redemptions", "transactions_sample")}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        print(f"absent: {missing}: this bench needs the team's ../shared/datasets", file=sys.stderr)
        return 2
    read = {name: pd.read_csv(path, dtype=str) for name, path in files.items()}
    windows = {row.campaign_id: (datetime.combine(datetime.fromisoformat(row.start_date).date(), time(0), UTC)
                                 - timedelta(seconds=1),
                                 datetime.combine(datetime.fromisoformat(row.end_date).date(), time(23, 59, 59), UTC))
               for row in read["campaign_descriptions"].itertuples()}
    products = read["coupons"].groupby("campaign_id")["product_id"].agg(lambda s: tuple(sorted(set(s)))).to_dict()
    offers_by_household: dict[str, list[str]] = defaultdict(list)
    for row in read["campaigns"].itertuples():
        offers_by_household[row.household_id].append(row.campaign_id)

    lines = read["transactions_sample"]
    lines["coupon_disc"] = lines["coupon_disc"].astype(float)
    lines["at"] = pd.to_datetime(lines["transaction_timestamp"]).dt.tz_localize("UTC")
    with_code: dict[str, set[str]] = defaultdict(set)
    product_only: dict[str, set[str]] = defaultdict(set)
    baskets = 0
    for (household, _), basket in lines.groupby(["household_id", "basket_id"]):
        baskets += 1
        at = basket["at"].iloc[0].to_pydatetime()
        bought = set(basket["product_id"])
        coded = set(basket.loc[basket["coupon_disc"] > 0, "product_id"])
        for campaign in offers_by_household.get(household, ()):
            start, end = windows[campaign]
            offered = list(products.get(campaign, ()))
            if not offered:
                continue
            if redeems(offered, start, end, at, bought):
                product_only[campaign].add(household)
            if coded and redeems(offered, start, end, at, coded):
                with_code[campaign].add(household)

    data = read["coupon_redemptions"].groupby("campaign_id")["household_id"].nunique().to_dict()
    campaigns = sorted(windows, key=int)
    rows = [{"campaign_id": c, "targeted": int((read["campaigns"]["campaign_id"] == c).sum()),
             "data_redeeming_households": int(data.get(c, 0)), "ours_with_code": len(with_code[c]),
             "ours_product_only": len(product_only[c])} for c in campaigns]
    ours = np.array([r["ours_with_code"] for r in rows], dtype=float)
    theirs = np.array([r["data_redeeming_households"] for r in rows], dtype=float)
    pearson = float(np.corrcoef(ours, theirs)[0, 1])
    spearman = float(pd.Series(ours).rank().corr(pd.Series(theirs).rank()))
    print(f"{'campaign':>8} {'targeted':>9} {'data: households redeeming':>27} {'ours: with code':>16} "
          f"{'ours: product only':>19}")
    for r in rows:
        print(f"{r['campaign_id']:>8} {r['targeted']:>9,} {r['data_redeeming_households']:>27,} "
              f"{r['ours_with_code']:>16,} {r['ours_product_only']:>19,}")
    total_data, total_code = int(theirs.sum()), int(ours.sum())
    total_product = sum(r["ours_product_only"] for r in rows)
    print(f"{'all':>8} {'':>9} {total_data:>27,} {total_code:>16,} {total_product:>19,}")
    print(f"\n{baskets:,} baskets in the 75,000-line sample; per-campaign agreement of 'with code' with the data: "
          f"Pearson {pearson:.2f}, Spearman {spearman:.2f}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"run_at": datetime.now(UTC).isoformat(timespec="seconds"), "baskets": baskets,
                                   "pearson_with_code": round(pearson, 3), "spearman_with_code": round(spearman, 3),
                                   "totals": {"data": total_data, "ours_with_code": total_code,
                                              "ours_product_only": total_product},
                                   "campaigns": rows}, indent=2) + "\n")
    print(f"saved {RESULTS.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

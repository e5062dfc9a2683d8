"""Write RUNS/console-cases.csv: five phantom lesions of site-a with their clicks (demo input)."""

import csv
import sys
from pathlib import Path

runs = Path(sys.argv[1])
site = runs / "phantom" / "site-a"
with open(site / "cases.csv") as src, open(runs / "console-cases.csv", "w", newline="") as dst:
    out = csv.writer(dst)
    out.writerow(["case_id", "image", "seed_x", "seed_y"])
    for row in [r for r in csv.DictReader(src) if r["seed_x"]][:5]:
        out.writerow(
            [row["case_id"], Path("phantom/site-a") / row["image"], row["seed_x"], row["seed_y"]]
        )
print(runs / "console-cases.csv")

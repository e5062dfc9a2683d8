"""Per-round table of a federated cycle, for ``dvc plots show``:
``python scripts/round_table.py FEDERATE-HISTORY.json > ROUNDS.csv``.

Columns: round, locked-test AUC with its 95 % CI, Dice, ECE, and how many sites replied.
"""

import csv
import json
import sys
from pathlib import Path

rows = json.loads(Path(sys.argv[1]).read_text())
out = csv.writer(sys.stdout, lineterminator="\n")
out.writerow(["round", "auc", "auc_ci_low", "auc_ci_high", "dice", "ece", "sites_replied"])
for row in rows:
    low, high = row.get("auc_ci") or (None, None)
    values = [row.get("auc"), low, high, row.get("dice"), row.get("ece")]
    out.writerow(
        [row["round"], *("" if v is None else f"{v:.4f}" for v in values), len(row["sites"])]
    )

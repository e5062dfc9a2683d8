"""Print the phantom's Bayes ceiling on a locked test set: the AUC of the true probability of
malignancy (the phantom's ``p_malignant``) over the locked cases, per site and overall.

No model can beat it on average: pathology is a draw from ``p_malignant``, which depends on the
lexicon terms alone. Usage: ``python scripts/bayes_ceiling.py RUNS/phantom RUNS/locked [--json]``.
"""

import csv
import json
import sys
from pathlib import Path

from sklearn.metrics import roc_auc_score

phantom, locked = Path(sys.argv[1]), Path(sys.argv[2])
p = {}
for table in sorted(phantom.glob("site-*/cases.csv")):
    with table.open(newline="") as f:
        p |= {r["case_id"]: float(r["p_malignant"]) for r in csv.DictReader(f) if r["p_malignant"]}
cases = json.loads((locked / "manifest.json").read_text())["cases"]
lesions = [c for c in cases if c["case_id"] in p and c["label"] in (0, 1)]
result = {
    "cases": len(lesions),
    "auc": roc_auc_score([c["label"] for c in lesions], [p[c["case_id"]] for c in lesions]),
}
for site in sorted({c["site_id"] for c in lesions}):
    mine = [c for c in lesions if c["site_id"] == site]
    result[site] = roc_auc_score([c["label"] for c in mine], [p[c["case_id"]] for c in mine])
if "--json" in sys.argv:
    print(json.dumps({k: round(v, 4) for k, v in result.items()}))
else:
    print(
        "Bayes ceiling (AUC of the true p on the locked set): "
        + ", ".join(
            f"{k} {v:.3f}" if isinstance(v, float) else f"{v} cases" for k, v in result.items()
        )
    )

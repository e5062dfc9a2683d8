"""Demo input and output for the console.

``python scripts/demo_cases.py RUNS`` writes RUNS/console-cases.csv: five lesions of site-a that
lie in the locked test set (no model trained on them), with their clicks.
``python scripts/demo_cases.py RUNS --show RESULTS.jsonl`` prints the console's answers for them
beside the phantom's ground truth.
"""

import csv
import json
import sys
from pathlib import Path

runs = Path(sys.argv[1])
site = runs / "phantom" / "site-a"
locked = {
    c["case_id"] for c in json.loads((runs / "locked" / "manifest.json").read_text())["cases"]
}
patients: dict[str, dict[str, str]] = {}  # one view per patient
with open(site / "cases.csv", newline="") as src:
    for r in csv.DictReader(src):
        if r["seed_x"] and r["case_id"] in locked:
            patients.setdefault(r["patient_id"], r)
rows = list(patients.values())[:5]

if "--show" not in sys.argv:
    with open(runs / "console-cases.csv", "w", newline="") as dst:
        out = csv.writer(dst)
        out.writerow(["case_id", "image", "seed_x", "seed_y"])
        for row in rows:
            image = Path("phantom/site-a") / row["image"]
            out.writerow([row["case_id"], image, row["seed_x"], row["seed_y"]])
    print(runs / "console-cases.csv")
    sys.exit(0)

truth = {r["case_id"]: r for r in rows}
results = Path(sys.argv[sys.argv.index("--show") + 1])
print(f"  {'case':<10} {'truth':<24} {'model':<34} margin (model | truth)")
for line in results.read_text().splitlines():
    answer = json.loads(line)
    real = truth[answer["case_id"]]
    if "error" in answer:
        print(f"  {answer['case_id']:<10} error: {answer['error']}")
        continue
    said = (
        f"p={answer['malignancy_probability']:.2f} {answer['suggestion']}, "
        f"BI-RADS {answer['birads']}"
    )
    known = f"{real['pathology']}, BI-RADS {real['birads']}"
    margin = "&".join(answer["descriptors"].get("margin") or []) or "-"
    print(f"  {answer['case_id']:<10} {known:<24} {said:<34} {margin} | {real['margin']}")

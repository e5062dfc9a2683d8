"""Flatten a gate report into DVC metrics: ``python scripts/gate_metrics.py GATE_REPORT.json``.

Prints ``{"passed": …, "<gate>.passed": …, "<gate>.<figure>": number, …}`` (numbers only, one
level of nesting), so that ``dvc metrics show`` lists every cycle's gate figures.
"""

import json
import sys
from pathlib import Path

report = json.loads(Path(sys.argv[1]).read_text())
figures: dict[str, object] = {
    "version": report["candidate"]["version"],
    "against": (report.get("current") or {}).get("version", "first release"),
    "passed": report["passed"],
}
for gate in report["gates"]:
    figures[f"{gate['name']}.passed"] = gate["passed"]
    for key, value in gate["measured"].items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        figures[f"{gate['name']}.{key}"] = round(float(value), 4)
print(json.dumps(figures, indent=1))

"""Print one line per federated round as the run records it (demo helper).

Usage: ``python scripts/demo_rounds.py HISTORY.json PID [TOTAL_ROUNDS]``: follows the history
file that ``sonofed vendor federate`` rewrites after every round, printing each new round's
locked-test AUC, Dice and which sites replied, until process PID has exited.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _rows(path: Path) -> list[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return []  # not written yet, or being replaced


def _line(row: dict, total: str) -> str:
    sites = row.get("sites") or []
    lost = [*(row.get("dropped") or []), *(row.get("failed") or [])]
    replied = f"{len(sites)} sites replied ({', '.join(sites)})" if sites else "before training"
    if lost:
        replied += f"; no usable update from {', '.join(map(str, lost))}"
    auc, dice = row.get("auc"), row.get("dice")
    lo, hi = row.get("auc_ci") or (None, None)
    ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None else ""
    return (
        f"  round {row['round']:>2}{total}: locked-test AUC {auc:.3f}{ci}, Dice {dice:.3f}, "
        f"{replied}"
    )


def _fresh(path: Path, since: float) -> bool:
    try:
        return path.stat().st_mtime >= since
    except OSError:
        return False


def main() -> int:
    path, pid = Path(sys.argv[1]), int(sys.argv[2])
    total = f"/{sys.argv[3]}" if len(sys.argv) > 3 else ""
    start, printed = time.time() - 1.0, 0
    while True:
        running = _alive(pid)
        rows = _rows(path) if _fresh(path, start) else []  # not a previous run's history
        for row in rows[printed:]:
            print(_line(row, total), flush=True)
        printed = max(printed, len(rows))
        if not running:
            if not printed and path.is_file():
                print("  (unchanged: DVC kept the previous run; its rounds were)", flush=True)
                for row in _rows(path):
                    print(_line(row, total), flush=True)
            return 0
        time.sleep(1.0)


if __name__ == "__main__":
    sys.exit(main())

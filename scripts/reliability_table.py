"""Fill the counts of docs/RELIABILITY.md's fault matrix from the last test run.

The fault tests write their counts to ``.reliability/<name>.json``; this rewrites
the table between the ``<!-- counts -->`` markers. Run after ``make test``:

    .venv/bin/python scripts/reliability_table.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "RELIABILITY.md"
START, END = "<!-- counts -->", "<!-- /counts -->"


def main() -> int:
    runs = {p.stem: (json.loads(p.read_text()), p.stat().st_mtime)
            for p in sorted((ROOT / ".reliability").glob("*.json"))}
    if not runs:
        print("no counts in .reliability/: run the tests first", file=sys.stderr)
        return 1
    lines = ["| counts of | run at (UTC) | records in | outcomes out | missing | doubled | "
             "different from offline | also measured |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for name, (r, mtime) in runs.items():
        extra = ", ".join(f"{k.replace('_', ' ')} {v:,}" if isinstance(v, int) else f"{k} {v}"
                          for k, v in r.items() if k not in {
                              "test", "records_in", "outcomes_out", "missing", "doubled",
                              "different", "offline_outcomes"})
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(mtime))
        lines.append(f"| `{name}` | {when} | {r['records_in']:,} | {r['outcomes_out']:,} | "
                     f"{r['missing']} | {r['doubled']} | {r['different']} | {extra} |")
    text = DOC.read_text()
    a, b = text.index(START) + len(START), text.index(END)
    DOC.write_text(text[:a] + "\n" + "\n".join(lines) + "\n" + text[b:])
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Record-for-record comparison of two settlements of the same input.

Used to prove that the streaming engine and offline ``settle`` agree: the
publisher's manifest maps every Kafka ``source`` back to the file line it came
from, after which both sides must hold exactly the same grants (by
``grant_id``, every column) and the same rejections (by source, every column).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa


@dataclass
class Comparison:
    grants_left: int = 0
    grants_right: int = 0
    rejections_left: int = 0
    rejections_right: int = 0
    differences: list[str] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return not self.differences

    def __str__(self) -> str:
        head = (f"grants {self.grants_left} vs {self.grants_right}, "
                f"rejections {self.rejections_left} vs {self.rejections_right}")
        if self.equal:
            return head + ": identical"
        more = len(self.differences) - 20
        # rejections first: when outcomes differ, the reason is the first clue
        diffs = sorted(self.differences, key=lambda d: not d.startswith("rejection"))
        lines = diffs[:20] + ([f"... and {more} more"] if more > 0 else [])
        return head + f": {len(self.differences)} differences\n  " + "\n  ".join(lines)


def _rows(t: pa.Table, key: str, mapping: dict[str, str] | None) -> dict[Any, dict[str, Any]]:
    out: dict[Any, dict[str, Any]] = {}
    for row in t.to_pylist():
        if mapping is not None:
            row["source"] = mapping.get(row["source"], "?" + row["source"])
        out[row[key]] = row
    return out


def compare(left_grants: pa.Table, left_rejections: pa.Table, right_grants: pa.Table,
            right_rejections: pa.Table, right_to_left_source: dict[str, str] | None = None,
            limit: int = 1000) -> Comparison:
    """Compare two settlements; ``right_to_left_source`` rewrites the right
    side's sources (e.g. Kafka positions to file lines) before comparing."""
    c = Comparison(left_grants.num_rows, right_grants.num_rows, left_rejections.num_rows,
                   right_rejections.num_rows)
    for name, key, lt, rt in (("grant", "grant_id", left_grants, right_grants),
                              ("rejection", "source", left_rejections, right_rejections)):
        lrows = _rows(lt, key, None)
        rrows = _rows(rt, key, right_to_left_source)
        for k in sorted(set(lrows) | set(rrows), key=str):
            a, b = lrows.get(k), rrows.get(k)
            if a == b:
                continue
            if len(c.differences) >= limit:
                break
            if a is None:
                c.differences.append(f"{name} {k}: only on the right: {b}")
            elif b is None:
                c.differences.append(f"{name} {k}: only on the left: {a}")
            else:
                cols = [f"{col}={a[col]!r}/{b[col]!r}" for col in a if a[col] != b.get(col)]
                c.differences.append(f"{name} {k}: " + ", ".join(cols))
    return c

"""``mynapoint ledger report``: one self-contained HTML file for finance.

No script, no external file, no network: tables are HTML, charts are static SVG
drawn by matplotlib and inlined, text stays text in the SVG (``svg.fonttype =
none``) so the browser draws Japanese labels with its own fonts. It opens from a
USB stick.
"""

from __future__ import annotations

import html
import io
import math
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from engine.finance.statements import statements
from engine.rules.model import Campaign, Registry

RULES_VERSIONS = ("SETTLEMENT_RULES.md version 1", "FINANCE_RULES.md version 1")
PROJECTION_MONTHS = 3  # the "current monthly pace": mean of the last three months
HORIZON_MONTHS = 120   # a run-out further away than this is "not within 10 years"

_CSS = """
body { font-family: "Noto Sans CJK JP", "Hiragino Sans", "Yu Gothic", Meiryo, sans-serif;
       margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 2px 8px; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; }
figure { margin: 1em 0; } figure svg { max-width: 100%; height: auto; }
.note { color: #555; font-size: 0.9em; }
"""


def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _figure(chart_id: str, title: str, svg: str) -> str:
    return (f'<figure id="{chart_id}" class="chart">{svg}'
            f"<figcaption>{html.escape(title)}</figcaption></figure>")


def _table(t: pa.Table, headers: dict[str, str] | None = None) -> str:
    headers = headers or {}
    head = "".join(f"<th>{html.escape(headers.get(c, c))}</th>" for c in t.column_names)
    body = []
    for row in t.to_pylist():
        cells = []
        for v in row.values():
            if isinstance(v, bool) or v is None:
                cells.append(f"<td>{'' if v is None else str(v).lower()}</td>")
            elif isinstance(v, int):
                cells.append(f'<td class="n">{v:,}</td>')
            elif isinstance(v, float):
                cells.append(f'<td class="n">{v:,.1f}</td>')
            else:
                cells.append(f"<td>{html.escape(str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _setup_matplotlib() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "mynapoint",
                         "figure.figsize": (10, 4.2), "axes.grid": True,
                         "grid.alpha": 0.3, "font.size": 9})
    return plt


def _month_index(month: str) -> int:
    y, m = month.split("-")
    return int(y) * 12 + int(m) - 1


def _month_name(index: int) -> str:
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def _payout_chart(plt: Any, st: pa.Table) -> str:
    fig, ax = plt.subplots()
    if st.num_rows == 0:
        ax.text(0.5, 0.5, "no grants", ha="center", va="center", transform=ax.transAxes)
    else:
        months = sorted(set(st["payout_month"].to_pylist()))
        pos = {m: i for i, m in enumerate(months)}
        by_op: dict[str, list[int]] = {}
        for r in st.to_pylist():
            by_op.setdefault(r["operator_id"], [0] * len(months))[pos[r["payout_month"]]] = \
                r["net_points"]
        bottom_pos = [0] * len(months)
        bottom_neg = [0] * len(months)
        for op, values in sorted(by_op.items()):
            bottoms = [bp if v >= 0 else bn for v, bp, bn in zip(values, bottom_pos, bottom_neg,
                                                                strict=True)]
            ax.bar(range(len(months)), values, bottom=bottoms, label=op)
            bottom_pos = [b + max(v, 0) for b, v in zip(bottom_pos, values, strict=True)]
            bottom_neg = [b + min(v, 0) for b, v in zip(bottom_neg, values, strict=True)]
        ax.set_xticks(range(len(months)), months, rotation=45, ha="right")
        ax.legend(fontsize=7, ncols=2)
    ax.set_xlabel("payout month")
    ax.set_ylabel("net points")
    return _svg(fig)


def _budget(con: Any, campaign: Campaign) -> tuple[str, str]:
    """The budget chart (cumulative net points by spending month, projected at the
    current pace) and a sentence on when the budget runs out."""
    rows = con.execute(
        "SELECT strftime(spending_month, '%Y-%m'), "
        "CAST(sum(points_granted - points_clawed_back) AS BIGINT) FROM grant_months "
        "GROUP BY 1 ORDER BY 1").fetchall()
    months = [_month_index(m) for m, _ in rows]
    cumulative: list[int] = []
    for _, p in rows:
        cumulative.append((cumulative[-1] if cumulative else 0) + p)
    used = cumulative[-1] if cumulative else 0
    budget = campaign.budget_points
    recent = [p for _, p in rows[-PROJECTION_MONTHS:]]
    pace = sum(recent) / len(recent) if recent else 0.0
    if budget is None:
        sentence = "予算未設定 / no budget_points in the campaign configuration."
    elif used >= budget:
        sentence = f"予算超過 / the budget is used up: {used:,} of {budget:,} points."
    elif pace <= 0 or not months:
        sentence = (f"{used:,} / {budget:,} points ({used / budget:.4%}); at the current "
                    "pace the budget does not run out.")
    elif math.ceil((budget - used) / pace) > HORIZON_MONTHS:
        sentence = (f"{used:,} / {budget:,} points ({used / budget:.4%}); at the current pace "
                    f"({pace:,.0f} points/month) the budget does not run out within "
                    f"{HORIZON_MONTHS // 12} years / 現在のペースでは{HORIZON_MONTHS // 12}年以内に"
                    "予算に到達しません.")
    else:
        ahead = math.ceil((budget - used) / pace)
        sentence = (f"{used:,} / {budget:,} points ({used / budget:.4%}). 現在のペース "
                    f"(mean of the last {len(recent)} months: {pace:,.0f} points/month) では "
                    f"{_month_name(months[-1] + ahead)} に予算到達 / at this pace the budget "
                    f"runs out in {_month_name(months[-1] + ahead)}.")
    plt = _setup_matplotlib()
    fig, ax = plt.subplots()
    if months:
        ax.plot(months, cumulative, marker="o", label="net points granted (cumulative)")
        if pace > 0 and budget is not None and used < budget:
            ahead = min(math.ceil((budget - used) / pace), 12)
            ax.plot([months[-1], months[-1] + ahead], [used, used + pace * ahead],
                    linestyle="--", label="projection at the current pace")
    if budget is not None:
        ax.axhline(budget, color="red", label=f"budget_points {budget:,}")
    ticks = ax.get_xticks()
    ax.set_xticks(ticks, [_month_name(int(t)) if t == int(t) else "" for t in ticks],
                  rotation=45, ha="right")
    ax.set_xlabel("spending month (JST)")
    ax.set_ylabel("points")
    ax.legend(fontsize=8)
    return _svg(fig), sentence


def _rejections_chart(plt: Any, counts: list[tuple[str, int]]) -> str:
    fig, ax = plt.subplots(figsize=(10, max(2.0, 0.35 * len(counts) + 1)))
    if counts:
        ax.barh([r for r, _ in counts], [n for _, n in counts])
        ax.invert_yaxis()
    else:
        ax.text(0.5, 0.5, "no rejections", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("rejections")
    return _svg(fig)


def build_report(con: Any, registry: Registry, campaign: Campaign,
                 operators_file: str) -> str:
    from engine import __version__

    st = statements(con, registry, operators_file)
    control = st.control.to_pylist()[0]
    plt = _setup_matplotlib()
    payout_svg = _payout_chart(plt, st.table)
    budget_svg, budget_sentence = _budget(con, campaign)
    reasons = con.execute("SELECT reason, count(*) FROM rejections GROUP BY reason "
                          "ORDER BY 2 DESC, 1").fetchall()
    rejections_svg = _rejections_chart(plt, reasons)
    people = con.execute(
        "WITH p AS (SELECT mykey_id, any_value(operator_id) AS operator_id, sum(points) AS s "
        "FROM grants GROUP BY mykey_id) "
        "SELECT operator_id, count(*) FILTER (WHERE s <> 0) AS people_with_points, "
        "count(*) FILTER (WHERE s = $cap) AS people_at_cap FROM p GROUP BY operator_id "
        "ORDER BY operator_id", {"cap": campaign.cap_points}).to_arrow_table()
    with_points = sum(people["people_with_points"].to_pylist())
    at_cap = sum(people["people_at_cap"].to_pylist())
    campaigns = [r[0] for r in con.execute(
        "SELECT DISTINCT campaign FROM grants ORDER BY 1").fetchall()]
    budget_people = campaign.budget_people
    people_line = (f"{with_points:,} people with points"
                   + (f" / budget_people {budget_people:,} ({with_points / budget_people:.4%})"
                      if budget_people else ""))
    j = {"operator_id": "事業者 operator", "payout_month": "支払月 payout month",
         "grants": "付与件数 grants", "points_granted": "付与ポイント points granted",
         "clawbacks": "取消件数 clawbacks", "points_clawed_back": "取消ポイント clawed back",
         "net_points": "請求ポイント net points", "people": "人数 people",
         "net_amount": "決済額 net amount (¥)"}
    tie = ("合計一致 / net_points tie out to the ledger" if control["ties_out"]
           else "不一致 / net_points DO NOT tie out to the ledger")
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    versions = "".join(f"<li>{html.escape(v)}</li>" for v in RULES_VERSIONS)
    parts = [
        "<!DOCTYPE html>", '<html lang="ja"><head><meta charset="utf-8">',
        "<title>マイナポイント 精算レポート / Mynapoint finance report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>マイナポイント 精算レポート<br>Mynapoint finance report</h1>",
        f'<p class="note">campaign {html.escape(", ".join(campaigns) or campaign.id)}; '
        f"generated {now} by mynapoint-engine {__version__}</p>",
        "<h2>管理合計 / Control totals</h2>",
        _table(st.control),
        f'<p class="note">{tie}.</p>',
        "<h2>予算執行状況 / Budget use</h2>",
        f"<p>{html.escape(budget_sentence)}</p>",
        _figure("chart-budget", "予算に対する累計付与ポイントと見通し / net points against "
                "budget_points, with a projection at the current monthly pace", budget_svg),
        "<h2>支払月別ポイント / Points by payout month</h2>",
        _figure("chart-payout", "事業者別・支払月別の請求ポイント / net points per operator "
                "and payout month", payout_svg),
        "<h2>月次明細 / Monthly statements</h2>",
        _table(st.table, j),
        "<h2>却下理由 / Rejections by reason</h2>",
        _figure("chart-rejections", "理由別の却下件数 / rejections by reason code",
                rejections_svg),
        "<h2>上限到達者 / People at the cap</h2>",
        f"<p>{at_cap:,} people at the cap of {campaign.cap_points:,} points; "
        f"{html.escape(people_line)}.</p>",
        _table(people, {"operator_id": "事業者 operator",
                        "people_with_points": "付与人数 people with points",
                        "people_at_cap": "上限到達 at the cap"}),
        "<h2>ルールの版 / Rules versions</h2>", f"<ul>{versions}</ul>",
        "</body></html>",
    ]
    return "\n".join(parts)

"""The HTML report's content, on the hand-computed example."""

from __future__ import annotations

import re
from pathlib import Path

from tests.finance.example import GRANTS, OPERATORS_TOML, REJECTIONS, make_ledger, run


def report(tmp_path: Path, campaign: str) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    ops = tmp_path / "operators.toml"
    ops.write_text(OPERATORS_TOML)
    camp = tmp_path / "campaign.toml"
    camp.write_text(campaign)
    led = make_ledger(tmp_path / "l.duckdb", GRANTS, REJECTIONS)
    r = run("report", "--ledger", str(led), "--out", str(tmp_path / "rp"), "--operators",
            str(ops), "--campaign", str(camp))
    assert r.returncode == 0, r.stderr
    return (tmp_path / "rp" / "report.html").read_text(encoding="utf-8")


def test_report_sections_and_budget_projection(tmp_path: Path) -> None:
    # spending months (JST) 2020-10..2021-01: 5000, 600, -250, 2500 net points; pace is
    # the mean of the last three, 950/month; 2150 left of 10000 -> 3 more months
    html = report(tmp_path, "budget_points = 10000\nbudget_people = 4\n")
    for heading in ("月次明細 / Monthly statements", "管理合計 / Control totals",
                    "予算執行状況 / Budget use", "却下理由 / Rejections by reason",
                    "上限到達者 / People at the cap", "ルールの版 / Rules versions"):
        assert heading in html
    assert "7,850 / 10,000 points" in html and "runs out in 2021-04" in html
    assert "950 points/month" in html
    # k1 ends at 4250 (clawed back below the cap): nobody at the cap; k4 nets 0 points
    assert "0 people at the cap of 5,000 points; 4 people with points / budget_people 4" in html
    assert "FINANCE_RULES.md version 1" in html and "SETTLEMENT_RULES.md version 1" in html
    for chart in ("chart-budget", "chart-payout", "chart-rejections"):
        m = re.search(rf'<figure id="{chart}" class="chart"><svg.*?</svg>', html, re.S)
        assert m and "<path" in m.group(0), chart
    assert "NOT_ENROLLED" in html          # the rejections chart's bar label, as text
    assert "2021-02" in html and ">-750<" in html  # statement table rows
    # self-contained: nothing fetched from anywhere
    assert "<script" not in html and "<link" not in html
    assert not re.search(r'(src|href)="(?!#)', html)


def test_report_budget_sentences(tmp_path: Path) -> None:
    assert "no budget_points" in report(tmp_path / "a", 'id = "x"\n')
    assert "the budget is used up: 7,850 of 7,000" in report(tmp_path / "b",
                                                            "budget_points = 7000\n")
    assert "does not run out within 10 years" in report(tmp_path / "c",
                                                        "budget_points = 10000000\n")

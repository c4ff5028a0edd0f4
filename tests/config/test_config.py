"""Configuration: every key of campaign.toml and operators.toml is honoured, and every
kind of bad configuration raises ConfigError naming the file and the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from engine.config import DEFAULT_REGISTRY, ConfigError, load_campaign, load_operators
from engine.rules.model import Campaign, Kind, Rounding
from engine.rules.settlement import settle_records
from tests import reference_model
from tests.builders import day, enr, txn

US = 1_000_000
A = "AAAA0001"

OPERATOR_TABLE = """
[[operators]]
id = "opa"
name = "Op A"
earns_on = ["purchase"]
selection_opens = 2020-07-01
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def campaign(tmp_path: Path, text: str) -> Campaign:
    return load_campaign(write(tmp_path, "campaign.toml", text))


def run(enrollments: list, transactions: list, c: Campaign | None = None,
        registry: object = None) -> list[tuple]:
    """(reason, points, cumulative_points) of every outcome; the reference must agree."""
    c = c or load_campaign(None)
    reg = registry or DEFAULT_REGISTRY
    ts = transactions or ["filler"]           # empty inputs are tested in test_reasons
    got = [(o.reason, o.points, o.cumulative_points)
           for o in settle_records(enrollments, ts, c, reg)]  # type: ignore[arg-type]
    ref = [(o.reason, o.points, o.cumulative_points)
           for o in reference_model.settle_records(enrollments, ts, c, reg)]  # type: ignore[arg-type]
    assert got == ref
    return got[:len(enrollments) + len(transactions)]


# ------------------------------------------------------------------ shipped defaults


def test_default_campaign_reproduces_the_program() -> None:
    c = load_campaign(None)
    assert c == Campaign()
    assert c.id == "mynapoint-2020"
    assert c.rate_percent == 25 and c.cap_points == 5000 and c.max_amount == 10_000_000
    assert c.rounding == Rounding.CUMULATIVE_FLOOR
    assert c.park_timeout == 86_400_000_000


def test_default_registry() -> None:
    reg = load_operators(None)
    assert reg == DEFAULT_REGISTRY
    ids = [op.id for op in reg.operators]
    assert len(ids) == len(set(ids)) and {"paypay", "waon", "yucho-pay"} <= set(ids)
    waon = reg.operators[reg.code("waon")]
    assert set(waon.earns_on) == {Kind.CHARGE, Kind.PURCHASE}
    yucho = reg.operators[reg.code("yucho-pay")]
    assert yucho.last_day == day("2021-03-31") and yucho.selection_opens == day("2020-08-01")


# ------------------------------------------------------------------ campaign keys honoured


def test_id(tmp_path: Path) -> None:
    assert campaign(tmp_path, 'id = "mynapoint-2021"\n').id == "mynapoint-2021"


def test_window_start(tmp_path: Path) -> None:
    c = campaign(tmp_path, "window_start = 2020-10-01T00:00:00+09:00\n")
    assert c.window_start == Campaign().window_start + 30 * 86_400 * US
    early = txn(at="2020-09-30T23:59:59+09:00")
    assert run([enr()], [early])[1][0] is None
    assert run([enr()], [early], c)[1][0] == "OUTSIDE_WINDOW"
    assert run([enr()], [txn(at="2020-10-01T00:00:00+09:00")], c)[1][0] is None


def test_window_end_extension(tmp_path: Path) -> None:
    c = campaign(tmp_path, "window_end = 2022-01-01T00:00:00+09:00\n"
                           "accept_end = 2022-02-01T00:00:00+09:00\n")
    december = txn(at="2021-12-31T23:59:59+09:00", received_at="2021-12-31T23:59:59+09:00")
    assert run([enr()], [december])[1][0] == "LATE"
    assert run([enr()], [december], c)[1] == (None, 250, 250)
    assert run([enr()], [txn(at="2022-01-01T00:00:00+09:00")], c)[1][0] == "OUTSIDE_WINDOW"


def test_enroll_end(tmp_path: Path) -> None:
    c = campaign(tmp_path, "enroll_end = 2021-12-01T00:00:00+09:00\n")
    late_application = enr(applied="2021-10-15T00:00:00+09:00")
    assert run([late_application], []) == [("ENROLLMENT_CLOSED", 0, 0)]
    assert run([late_application], [], c) == [(None, 0, 0)]
    assert run([enr(applied="2021-12-01T00:00:00+09:00")], [], c) == [("ENROLLMENT_CLOSED", 0, 0)]


def test_accept_end(tmp_path: Path) -> None:
    c = campaign(tmp_path, "accept_end = 2021-12-01T00:00:00+09:00\n")
    t = txn(received_at="2021-11-15T00:00:00+09:00")
    assert run([enr()], [t])[1][0] == "LATE"
    assert run([enr()], [t], c)[1][0] is None
    assert run([enr()], [txn(received_at="2021-12-01T00:00:00+09:00")], c)[1][0] == "LATE"


def test_rate_percent(tmp_path: Path) -> None:
    c = campaign(tmp_path, "rate_percent = 10\n")
    assert c.rate_percent == 10
    assert run([enr()], [txn(amount=1239)], c)[1] == (None, 123, 123)


def test_cap_points(tmp_path: Path) -> None:
    c = campaign(tmp_path, "cap_points = 100\n")
    assert run([enr()], [txn(amount=1000)])[1][1] == 250
    assert run([enr()], [txn(amount=1000)], c)[1] == (None, 100, 100)


def test_cap_points_zero(tmp_path: Path) -> None:
    c = campaign(tmp_path, "cap_points = 0\n")
    assert run([enr()], [txn(amount=1000)], c)[1] == (None, 0, 0)


def test_rounding(tmp_path: Path) -> None:
    c = campaign(tmp_path, 'rounding = "per_transaction_floor"\n')
    assert c.rounding == Rounding.PER_TRANSACTION_FLOOR
    assert campaign(tmp_path, 'rounding = "cumulative_floor"\n').rounding == \
        Rounding.CUMULATIVE_FLOOR
    three = [txn(amount=3, txn_id=f"t{i}") for i in range(3)]
    assert [r[1] for r in run([enr()], three)[1:]] == [0, 1, 1]
    assert [r[1] for r in run([enr()], three, c)[1:]] == [0, 0, 0]


def test_max_amount(tmp_path: Path) -> None:
    c = campaign(tmp_path, "max_amount = 1000\n")
    assert c.max_amount == 1000
    assert run([enr()], [txn(amount=1001)])[1][0] is None
    assert run([enr()], [txn(amount=1001)], c)[1][0] == "INVALID_AMOUNT"
    assert run([enr()], [txn(amount=1000)], c)[1][0] is None


def test_max_amount_fits_the_states_32_bits(tmp_path: Path) -> None:
    """DECISIONS 102: the largest amount a campaign may allow is the largest the
    streaming state can store; a Campaign built in code is held to it too."""
    c = campaign(tmp_path, f"max_amount = {2**32 - 1}\n")
    assert c.max_amount == 2**32 - 1
    assert run([enr()], [txn(amount=2**32 - 1)], c)[1][0] is None
    with pytest.raises(ValueError, match="max_amount"):
        dataclasses.replace(c, max_amount=2**32)


@pytest.mark.parametrize(("text", "us"), [
    ("PT24H", 86_400_000_000), ("PT1H", 3_600_000_000), ("P1D", 86_400_000_000),
    ("PT90M", 5_400_000_000), ("PT30S", 30_000_000), ("P1DT2H", 93_600_000_000),
])
def test_park_timeout(tmp_path: Path, text: str, us: int) -> None:
    assert campaign(tmp_path, f'park_timeout = "{text}"\n').park_timeout == us


def test_full_campaign_file(tmp_path: Path) -> None:
    c = campaign(tmp_path, """
id = "x"
window_start = 2020-09-01T00:00:00Z
window_end = 2020-10-01T00:00:00Z
enroll_end = 2020-09-15T00:00:00Z
accept_end = 2020-11-01T00:00:00Z
rate_percent = 50
cap_points = 7
rounding = "per_transaction_floor"
max_amount = 99
park_timeout = "PT2H"
""")
    assert c == Campaign(id="x", window_start=1598918400 * US, window_end=1601510400 * US,
                         enroll_end=1600128000 * US, accept_end=1604188800 * US,
                         rate_percent=50, cap_points=7,
                         rounding=Rounding.PER_TRANSACTION_FLOOR, max_amount=99,
                         park_timeout=7200 * US, budget_people=None, budget_points=None)


def test_budget_keys(tmp_path: Path) -> None:
    shipped = load_campaign(None)
    assert (shipped.budget_people, shipped.budget_points) == (40_000_000, 200_000_000_000)
    c = campaign(tmp_path, "budget_people = 3\nbudget_points = 15000\n")
    assert (c.budget_people, c.budget_points) == (3, 15000)
    # FINANCE_RULES.md: the default is "none", also when a file overrides other keys
    assert campaign(tmp_path, 'id = "x"\n').budget_points is None


def test_operator_payout(tmp_path: Path) -> None:
    assert registry(tmp_path, OPERATOR_TABLE).operators[0].payout == "same_month"
    for value in ("same_month", "next_month", "month_after_next"):
        reg = registry(tmp_path, OPERATOR_TABLE + f'payout = "{value}"\n')
        assert reg.operators[0].payout == value
    shipped = {op.id: op.payout for op in load_operators(None).operators}
    assert shipped["suica"] == "same_month" and shipped["smbc-card"] == "month_after_next"


# ------------------------------------------------------------------ operator keys honoured


def registry(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    return load_operators(write(tmp_path, "operators.toml", text))


def test_operator_id_and_name(tmp_path: Path) -> None:
    reg = registry(tmp_path, OPERATOR_TABLE.replace('"opa"', '"my-pay_1"'))
    assert [(op.id, op.name) for op in reg.operators] == [("my-pay_1", "Op A")]
    assert reg.code("my-pay_1") == 0 and reg.code("paypay") == -1
    assert run([enr(op="my-pay_1")], [txn(op="my-pay_1")], registry=reg) == [
        (None, 0, 0), (None, 250, 250)]
    assert run([enr(op="paypay")], [], registry=reg) == [("UNKNOWN_OPERATOR", 0, 0)]


def test_operator_earns_on(tmp_path: Path) -> None:
    reg = registry(tmp_path, OPERATOR_TABLE.replace('["purchase"]', '["charge"]'))
    assert reg.operators[0].earns_on == (Kind.CHARGE,)
    assert run([enr(op="opa")], [txn(op="opa", kind="purchase")], registry=reg)[1][0] == \
        "KIND_NOT_ELIGIBLE"
    assert run([enr(op="opa")], [txn(op="opa", kind="charge")], registry=reg)[1][0] is None


def test_operator_earns_on_both(tmp_path: Path) -> None:
    reg = registry(tmp_path, OPERATOR_TABLE.replace('["purchase"]', '["charge", "purchase"]'))
    assert set(reg.operators[0].earns_on) == {Kind.CHARGE, Kind.PURCHASE}
    assert run([enr(op="opa")], [], registry=reg) == [("INVALID_EARN_ON", 0, 0)]
    assert run([enr(op="opa", earn_on="charge")], [txn(op="opa", kind="charge")],
               registry=reg)[1][0] is None


def test_operator_selection_opens(tmp_path: Path) -> None:
    reg = registry(tmp_path, OPERATOR_TABLE.replace("2020-07-01", "2020-09-10"))
    assert reg.operators[0].selection_opens == day("2020-09-10")
    assert run([enr(op="opa", applied="2020-09-09T23:59:59+09:00")], [], registry=reg) == [
        ("SELECTION_NOT_OPEN", 0, 0)]
    assert run([enr(op="opa", applied="2020-09-09T15:00:00Z")], [], registry=reg) == [(None, 0, 0)]


def test_operator_last_day(tmp_path: Path) -> None:
    reg = registry(tmp_path, OPERATOR_TABLE + "last_day = 2020-12-31\n")
    assert reg.operators[0].last_day == day("2020-12-31")
    assert registry(tmp_path, OPERATOR_TABLE).operators[0].last_day is None
    out = run([enr(op="opa")], [txn(op="opa", at="2020-12-31T23:59:59+09:00"),
                             txn(op="opa", at="2020-12-31T15:00:00Z", txn_id="t2")],
              registry=reg)
    assert [r[0] for r in out] == [None, None, "OUTSIDE_WINDOW"]


def test_several_operators(tmp_path: Path) -> None:
    reg = registry(tmp_path, OPERATOR_TABLE + OPERATOR_TABLE.replace('"opa"', '"opb"'))
    assert [op.id for op in reg.operators] == ["opa", "opb"]


# ------------------------------------------------------------------ errors


def assert_error(path: Path, key: str, loader) -> ConfigError:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as info:
        loader(path)
    msg = str(info.value)
    assert str(path) in msg, msg
    assert key in msg, msg
    return info.value


@pytest.mark.parametrize(("text", "key"), [
    ("windw_end = 2022-01-01T00:00:00+09:00\n", "windw_end"),                 # unknown key
    ("window_end = 2020-09-01T00:00:00+09:00\n", "window_end"),               # == start
    ("window_end = 2020-08-01T00:00:00+09:00\n", "window_end"),               # < start
    # extending the window past accept_end would make every late-received record LATE
    ("window_end = 2022-01-01T00:00:00+09:00\n", "accept_end"),
    ("window_start = 2020-09-01T00:00:00\n", "window_start"),                 # no offset
    ("window_start = 2020-09-01\n", "window_start"),                          # a date
    ('window_end = "tomorrow"\n', "window_end"),
    ("enroll_end = 2021-10-01T00:00:00\n", "enroll_end"),
    ("accept_end = 5\n", "accept_end"),
    ("rate_percent = 0\n", "rate_percent"),
    ("rate_percent = 101\n", "rate_percent"),
    ("rate_percent = 25.0\n", "rate_percent"),
    ('rate_percent = "25"\n', "rate_percent"),
    ("rate_percent = true\n", "rate_percent"),
    ("cap_points = -1\n", "cap_points"),
    ("cap_points = 5000.5\n", "cap_points"),
    ("max_amount = 0\n", "max_amount"),
    ('max_amount = "lots"\n', "max_amount"),
    ("max_amount = 4294967296\n", "max_amount"),  # the state stores amounts in 32 bits
    ('rounding = "round_half_up"\n', "rounding"),
    ('rounding = "Cumulative_Floor"\n', "rounding"),
    ("rounding = 1\n", "rounding"),
    ('park_timeout = "24h"\n', "park_timeout"),
    ('park_timeout = "PT"\n', "park_timeout"),
    ('park_timeout = "P"\n', "park_timeout"),
    ("park_timeout = 86400\n", "park_timeout"),
    ('id = ""\n', "id"),
    ("id = 2020\n", "id"),
    ("budget_people = 0\n", "budget_people"),
    ('budget_points = "lots"\n', "budget_points"),
    ("budget_points = 1.5\n", "budget_points"),
])
def test_campaign_errors(tmp_path: Path, text: str, key: str) -> None:
    assert_error(write(tmp_path, "campaign.toml", text), key, load_campaign)


def test_campaign_not_toml(tmp_path: Path) -> None:
    p = write(tmp_path, "campaign.toml", "cap_points = = 3\n")
    with pytest.raises(ConfigError, match=r"campaign\.toml"):
        load_campaign(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_campaign(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_operators(tmp_path / "nope.toml")


@pytest.mark.parametrize(("text", "key"), [
    (OPERATOR_TABLE.replace('["purchase"]', '["refund"]'), "earns_on"),        # unknown kind
    (OPERATOR_TABLE.replace('["purchase"]', '["Purchase"]'), "earns_on"),
    (OPERATOR_TABLE.replace('["purchase"]', "[]"), "earns_on"),
    (OPERATOR_TABLE.replace('["purchase"]', '"purchase"'), "earns_on"),
    (OPERATOR_TABLE.replace('["purchase"]', '["charge", "charge"]'), "earns_on"),
    (OPERATOR_TABLE + OPERATOR_TABLE, "id"),                                   # duplicate id
    (OPERATOR_TABLE.replace('"opa"', '"PayPay"'), "id"),                       # bad pattern
    (OPERATOR_TABLE.replace('"opa"', '"-opa"'), "id"),
    (OPERATOR_TABLE.replace('"opa"', '"' + "a" * 33 + '"'), "id"),
    (OPERATOR_TABLE.replace('"opa"', '""'), "id"),
    (OPERATOR_TABLE.replace('"opa"', "7"), "id"),
    (OPERATOR_TABLE + "last_day = 2020-06-30\n", "last_day"),                 # before opens
    (OPERATOR_TABLE + 'last_day = "soon"\n', "last_day"),
    (OPERATOR_TABLE.replace("2020-07-01", "2020-07-01T00:00:00+09:00"), "selection_opens"),
    (OPERATOR_TABLE.replace("2020-07-01", '"July"'), "selection_opens"),
    (OPERATOR_TABLE.replace('"Op A"', '""'), "name"),
    (OPERATOR_TABLE.replace('"Op A"', "1"), "name"),
    (OPERATOR_TABLE + 'fee_percent = 2\n', "fee_percent"),                     # unknown key
    (OPERATOR_TABLE + 'payout = "weekly"\n', "payout"),
    (OPERATOR_TABLE + "payout = 1\n", "payout"),
    ('version = 1\n' + OPERATOR_TABLE, "version"),
    ("", "operators"),                                                          # no operators
])
def test_operator_errors(tmp_path: Path, text: str, key: str) -> None:
    assert_error(write(tmp_path, "operators.toml", text), key, load_operators)


@pytest.mark.parametrize("missing", ["id", "name", "earns_on", "selection_opens"])
def test_operator_missing_required_key(tmp_path: Path, missing: str) -> None:
    text = "\n".join(line for line in OPERATOR_TABLE.splitlines()
                     if not line.startswith(f"{missing} ="))
    assert_error(write(tmp_path, "operators.toml", text), missing, load_operators)


def test_error_names_the_operator(tmp_path: Path) -> None:
    text = OPERATOR_TABLE + OPERATOR_TABLE.replace('"opa"', '"opb"').replace(
        '["purchase"]', '["refund"]')
    err = assert_error(write(tmp_path, "operators.toml", text), "earns_on", load_operators)
    assert "opb" in str(err) or "operators[1]" in str(err)


@pytest.mark.parametrize("command", ["settle", "worker"])
def test_a_command_with_a_bad_config_gets_one_line_and_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str) -> None:
    from engine.cli import main

    bad = tmp_path / "campaign.toml"
    bad.write_text('rate_percent = "lots"\n')
    args = ["--campaign", str(bad)]
    if command == "settle":
        args += ["--enrollments", str(tmp_path / "e.jsonl"),
                 "--transactions", str(tmp_path / "t.jsonl"), "--out", str(tmp_path / "o")]
    assert main([command, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mynapoint {command}: configuration error: ")
    assert "rate_percent" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()

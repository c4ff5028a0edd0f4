"""Campaign terms and the operator registry, loaded from TOML.

Both files are validated completely before anything runs: a bad file raises
:class:`ConfigError` naming the file, the key and what is wrong, so that
``settle`` and the worker can refuse to start instead of deciding with a
half-understood configuration.
"""

from __future__ import annotations

import re
import sys
import tomllib
from datetime import date, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from engine.rules.model import (
    KIND_NAMES,
    MAX_AMOUNT_LIMIT,
    OPERATOR_ID,
    PAYOUT_MONTHS,
    ROUNDING_NAMES,
    US_PER_SECOND,
    Campaign,
    Kind,
    Operator,
    Registry,
    epoch_us,
)

__all__ = [
    "DEFAULT_CAMPAIGN",
    "DEFAULT_REGISTRY",
    "ConfigError",
    "load_campaign",
    "load_operators",
    "parse_duration",
]

_DURATION = re.compile(
    r"P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+)S)?)?"
)


class ConfigError(ValueError):
    """A configuration file is unusable. ``str()`` names file, key and problem."""

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file, self.key, self.problem = file, key, problem
        super().__init__(f"{file}: {key}: {problem}")


def parse_duration(text: str) -> int:
    """ISO 8601 duration (days, hours, minutes, seconds) to microseconds.

    >>> parse_duration("PT24H") // 3_600_000_000
    24
    >>> parse_duration("P1DT30M") == (24 * 60 + 30) * 60 * 1_000_000
    True
    """
    m = _DURATION.fullmatch(text)
    if not m or text in ("P", "PT") or text.endswith("T"):
        raise ValueError(f"not an ISO 8601 duration like PT24H: {text!r}")
    d, h, mi, s = (int(m.group(g) or 0) for g in ("d", "h", "m", "s"))
    return (((d * 24 + h) * 60 + mi) * 60 + s) * US_PER_SECOND


def _read(path: Path | str | None, default_name: str) -> tuple[str, dict[str, Any]]:
    if path is None:
        ref = resources.files("engine.config").joinpath("defaults", default_name)
        return f"(default) {default_name}", tomllib.loads(ref.read_text(encoding="utf-8"))
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(str(p), "-", f"cannot read file ({e.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(str(p), "-", "not UTF-8 text") from None
    try:
        return str(p), tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(p), "-", f"not valid TOML ({e})") from None


def _instant(file: str, key: str, v: Any) -> int:
    if isinstance(v, str):
        try:
            v = datetime.fromisoformat(v)
        except ValueError:
            raise ConfigError(file, key, "not an RFC 3339 timestamp") from None
    if not isinstance(v, datetime) or v.tzinfo is None:
        raise ConfigError(file, key, "must be a timestamp with an offset, e.g. "
                          "2020-09-01T00:00:00+09:00")
    return epoch_us(v)


def _jst_date(file: str, key: str, v: Any) -> int:
    if isinstance(v, str):
        try:
            v = date.fromisoformat(v)
        except ValueError:
            raise ConfigError(file, key, "not a date like 2020-07-01") from None
    if isinstance(v, datetime) or not isinstance(v, date):
        raise ConfigError(file, key, "must be a calendar date (JST) like 2020-07-01")
    return (v - date(1970, 1, 1)).days


def _int(file: str, key: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(file, key, f"must be an integer, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise ConfigError(file, key, f"must be in {lo}..{hi}, got {v}")
    return v


_CAMPAIGN_KEYS = {"id", "window_start", "window_end", "enroll_end", "accept_end",
                  "rate_percent", "cap_points", "rounding", "max_amount", "park_timeout",
                  "budget_people", "budget_points"}


def load_campaign(path: Path | str | None = None) -> Campaign:
    """Campaign terms from ``campaign.toml``; ``None`` gives the shipped default.

    Keys missing from a user file take the rules page's default, so a file may
    override only what differs (e.g. ``window_end`` for an extension).
    """
    file, raw = _read(path, "campaign.toml")
    unknown = sorted(set(raw) - _CAMPAIGN_KEYS)
    if unknown:
        raise ConfigError(file, unknown[0], "unknown key (a typo would otherwise be ignored)")
    d = Campaign()
    cid = raw.get("id", d.id)
    if not isinstance(cid, str) or not cid.strip():
        raise ConfigError(file, "id", "must be a non-empty string")
    ws = _instant(file, "window_start", raw["window_start"]) if "window_start" in raw \
        else d.window_start
    we = _instant(file, "window_end", raw["window_end"]) if "window_end" in raw else d.window_end
    ee = _instant(file, "enroll_end", raw["enroll_end"]) if "enroll_end" in raw else d.enroll_end
    ae = _instant(file, "accept_end", raw["accept_end"]) if "accept_end" in raw else d.accept_end
    if we <= ws:
        raise ConfigError(file, "window_end", "must be after window_start")
    if ae < we:
        raise ConfigError(file, "accept_end", "must not be before window_end")
    rate = _int(file, "rate_percent", raw.get("rate_percent", d.rate_percent), 1, 100)
    cap = _int(file, "cap_points", raw.get("cap_points", d.cap_points), 0, 10**12)
    max_amount = _int(file, "max_amount", raw.get("max_amount", d.max_amount), 1,
                      MAX_AMOUNT_LIMIT)
    rounding_name = raw.get("rounding", "cumulative_floor")
    if rounding_name not in ROUNDING_NAMES:
        raise ConfigError(file, "rounding", f"must be one of {sorted(ROUNDING_NAMES)}")
    timeout = raw.get("park_timeout", "PT24H")
    if not isinstance(timeout, str):
        raise ConfigError(file, "park_timeout", "must be an ISO 8601 duration string like PT24H")
    try:
        park = parse_duration(timeout)
    except ValueError as e:
        raise ConfigError(file, "park_timeout", str(e)) from None
    # FINANCE_RULES.md: no budget unless the file sets one
    people, points = (_int(file, k, raw[k], 1, 10**15) if k in raw else None
                      for k in ("budget_people", "budget_points"))
    return Campaign(id=cid, window_start=ws, window_end=we, enroll_end=ee, accept_end=ae,
                    rate_percent=rate, cap_points=cap, rounding=ROUNDING_NAMES[rounding_name],
                    max_amount=max_amount, park_timeout=park, budget_people=people,
                    budget_points=points)


_OPERATOR_KEYS = {"id", "name", "earns_on", "selection_opens", "last_day", "payout"}


def load_operators(path: Path | str | None = None) -> Registry:
    """The operator registry from ``operators.toml``; ``None`` gives the shipped default."""
    file, raw = _read(path, "operators.toml")
    extra = sorted(set(raw) - {"operators"})
    if extra:
        raise ConfigError(file, extra[0], "unknown key; operators go in [[operators]] tables")
    tables = raw.get("operators")
    if not isinstance(tables, list) or not tables:
        raise ConfigError(file, "operators", "no [[operators]] tables")
    ops: list[Operator] = []
    seen: set[str] = set()
    for i, t in enumerate(tables):
        where = f"operators[{i}]"
        if not isinstance(t, dict):
            raise ConfigError(file, where, "must be a table")
        for k in sorted(set(t) - _OPERATOR_KEYS):
            raise ConfigError(file, f"{where}.{k}", "unknown key")
        for k in ("id", "name", "earns_on", "selection_opens"):
            if k not in t:
                raise ConfigError(file, f"{where}.{k}", "required key missing")
        oid = t["id"]
        if not isinstance(oid, str) or not OPERATOR_ID.fullmatch(oid):
            raise ConfigError(file, f"{where}.id", "must match [a-z0-9][a-z0-9_-]{0,31}")
        where = f"operators[{i}] ({oid})"
        if oid in seen:
            raise ConfigError(file, f"{where}.id", "duplicate operator id")
        seen.add(oid)
        if not isinstance(t["name"], str) or not t["name"].strip():
            raise ConfigError(file, f"{where}.name", "must be a non-empty string")
        earns = t["earns_on"]
        if (not isinstance(earns, list) or not earns or len(set(map(str, earns))) != len(earns)
                or any(e not in ("charge", "purchase") for e in earns)):
            raise ConfigError(file, f"{where}.earns_on",
                              'must be ["charge"], ["purchase"] or ["charge", "purchase"]')
        kinds = tuple(sorted(Kind(KIND_NAMES.index(e)) for e in earns))
        opens = _jst_date(file, f"{where}.selection_opens", t["selection_opens"])
        last = None
        if "last_day" in t:
            last = _jst_date(file, f"{where}.last_day", t["last_day"])
            if last < opens:
                raise ConfigError(file, f"{where}.last_day", "is before selection_opens")
        payout = t.get("payout", "same_month")
        if not isinstance(payout, str) or payout not in PAYOUT_MONTHS:
            raise ConfigError(file, f"{where}.payout",
                              "must be one of " + ", ".join(f'"{p}"' for p in PAYOUT_MONTHS))
        ops.append(Operator(id=oid, name=t["name"], earns_on=kinds, selection_opens=opens,
                            last_day=last, payout=payout))
    return Registry(tuple(ops))


DEFAULT_CAMPAIGN = load_campaign(None)
DEFAULT_REGISTRY = load_operators(None)


def load_or_report(command: str, campaign: Path | str | None,
                   operators: Path | str | None) -> tuple[Campaign, Registry] | None:
    """Both configuration files for ``mynapoint COMMAND``; or None after one line on
    stderr naming the file, the key and the problem (the command then exits 2)."""
    try:
        return load_campaign(campaign), load_operators(operators)
    except ConfigError as e:
        print(f"mynapoint {command}: configuration error: {e}", file=sys.stderr)
        return None

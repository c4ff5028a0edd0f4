"""Log formats: one JSON object per line with the documented fields, and nothing
secret or personal in either format."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from engine.ops import logs

INDIVIDUAL_NUMBER = "123456789018"


@pytest.fixture
def capture() -> Iterator[tuple[io.StringIO, logging.Logger]]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging.getLogger("mynapoint").level
    stream = io.StringIO()
    yield stream, root
    logging.captureWarnings(False)
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    logging.getLogger("mynapoint").setLevel(saved[2])


def configured(fmt: str, stream: io.StringIO) -> None:
    logs.configure(fmt)
    (handler,) = logging.getLogger().handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)


def test_json_lines_carry_the_documented_fields(capture) -> None:
    stream, _ = capture
    configured("json", stream)
    log = logging.getLogger("mynapoint.worker")
    log.info("partition %d: state restored", 3, extra={"partition": 3})
    log.warning("commit skipped", extra={"topic": "mynapoint.transactions", "partition": 0})
    logging.getLogger("mynapoint.worker").debug("not shown at INFO")
    logging.getLogger("aiokafka").info("not shown: third-party below WARNING")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("batch failed")
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert [x["message"] for x in lines] == ["partition 3: state restored", "commit skipped",
                                              "batch failed"]
    first = lines[0]
    assert set(first) == {"time", "level", "logger", "message", "partition"}
    assert first["level"] == "INFO" and first["logger"] == "mynapoint.worker"
    assert first["partition"] == 3
    assert first["time"].endswith("Z") and first["time"][10] == "T"
    assert lines[1]["topic"] == "mynapoint.transactions" and lines[1]["partition"] == 0
    assert "RuntimeError: boom" in lines[2]["exception"]


@pytest.mark.parametrize("fmt", logs.FORMATS)
def test_no_individual_number_or_password_in_any_format(capture, fmt: str) -> None:
    stream, _ = capture
    configured(fmt, stream)
    log = logging.getLogger("mynapoint.worker")
    log.warning("record with %s refused", INDIVIDUAL_NUMBER)
    logging.getLogger("aiokafka").error(
        'sasl.jaas.config=... username="settle" password="op-secret"; sasl_plain_password=x2')
    try:
        raise ValueError(f"bad key {INDIVIDUAL_NUMBER} password: hunter2")
    except ValueError:
        log.exception("failed")
    out = stream.getvalue()
    for secret in (INDIVIDUAL_NUMBER, "op-secret", "hunter2", "x2"):
        assert secret not in out, secret
    assert out.count(logs.REDACTED) >= 5
    if fmt == "text":
        assert not out.lstrip().startswith("{")
    else:
        assert all(json.loads(x) for x in out.splitlines() if x.startswith("{"))


def test_python_warnings_are_log_lines_too(capture) -> None:
    import warnings

    stream, _ = capture
    configured("json", stream)
    warnings.warn(f"deprecated thing near {INDIVIDUAL_NUMBER}", UserWarning, stacklevel=1)
    (line,) = stream.getvalue().splitlines()
    doc = json.loads(line)
    assert doc["logger"] == "py.warnings" and doc["level"] == "WARNING"
    assert "deprecated thing" in doc["message"] and INDIVIDUAL_NUMBER not in line


def test_redaction_keeps_other_numbers() -> None:
    assert logs.redact("offset 12345678901 and 1234567890123") == \
        "offset 12345678901 and 1234567890123"
    assert logs.redact(f"id:{INDIVIDUAL_NUMBER}.") == f"id:{logs.REDACTED}."


def test_unknown_format_refused() -> None:
    with pytest.raises(ValueError):
        logs.configure("xml")


def test_configured_logging_follows_stderr_when_it_is_replaced(
        capture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A record logged after stderr was swapped (and the old stream closed) goes to
    the new stderr, not to a closed file as a 'Logging error' traceback."""
    import sys

    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    logs.configure("text")
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    first.close()
    logging.getLogger("mynapoint.test").warning("late record")
    assert "late record" in second.getvalue()
    assert "Logging error" not in second.getvalue()


def test_pinned_stream_ignores_a_host_proxy_on_stderr(
        capture, monkeypatch: pytest.MonkeyPatch) -> None:
    """``faust worker`` swaps stderr for a proxy into its own logging: with the stream
    pinned, the engine's records reach that stream and never the proxy."""
    import sys

    pinned, proxy = io.StringIO(), io.StringIO()
    logs.configure("text", stream=pinned)
    monkeypatch.setattr(sys, "stderr", proxy)
    logging.getLogger("mynapoint.test").warning("start line")
    assert "start line" in pinned.getvalue()
    assert proxy.getvalue() == ""

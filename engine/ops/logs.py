"""Log output of the long-running commands: human-readable text (the default) or one
JSON object per line (``--log-format json``) for log shippers.

A JSON line carries ``time`` (RFC 3339, UTC), ``level``, ``logger``, ``message``, and
``topic``/``partition`` when the call passed them (``log.info(..., extra={"partition":
3})``), plus ``exception`` for a logged traceback.

Whatever the format, :class:`Redact` masks what must never reach a log: 12-digit runs
(an Individual Number, or something that could be one) and the value of anything
that looks like a password or SASL/JAAS secret, in the message and in tracebacks
(third-party libraries log what they like, e.g. connection strings).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TextIO

import orjson

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
_CONTEXT_FIELDS = ("topic", "partition")
# 12 digits not inside a longer run of digits: an Individual Number, however embedded
_TWELVE_DIGITS = re.compile(r"(?<![0-9])[0-9]{12}(?![0-9])")
_SECRET = re.compile(
    r"""(?ix)
    (password|passwd|secret|sasl_plain_password|sasl\.password)
    (["']?\s*[=:]\s*)
    ("[^"]*"|'[^']*'|[^\s,;)}]+)""")
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """Mask Individual-Number-like digit runs and secret values.

    >>> redact("record 123456789018 refused; password=hunter2 user=op")
    'record [redacted] refused; password=[redacted] user=op'
    >>> redact('ScramLoginModule required username="a" password="s3cr,et";')
    'ScramLoginModule required username="a" password=[redacted];'
    >>> redact("offset 1234567890123 of 99")
    'offset 1234567890123 of 99'
    """
    text = _TWELVE_DIGITS.sub(REDACTED, text)
    return _SECRET.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)


class Redact(logging.Filter):
    """Rewrites each record's message (and traceback text) through :func:`redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in _CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                out[field] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
        return orjson.dumps(out, default=str).decode()


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler on whatever ``sys.stderr`` is when a record is emitted (unless
    given a stream with ``setStream``): one bound to the stream at configure time
    writes to a closed file once the process swaps stderr (pytest's capture between
    tests, a redirecting caller) and turns a late record, e.g. a garbage-collected
    client's warning, into a traceback."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)
        self._fixed: object | None = None

    @property  # type: ignore[override]
    def stream(self) -> object:
        return self._fixed if self._fixed is not None else sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        self._fixed = value


def configure(fmt: str = "text", level: int = logging.WARNING,
              own_level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Route every log record to stderr in ``fmt``; the engine's own loggers
    (``mynapoint.*``) at ``own_level``, the rest (aiokafka is chatty) at ``level``.

    ``stream`` pins the output to one stream instead of following ``sys.stderr``: a
    host that replaces ``sys.stderr`` with a proxy into its own logging (``faust
    worker`` does) would otherwise receive every record back as one of its own."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}")
    handler = _Stderr()
    if stream is not None:
        handler.setStream(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(Redact())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("mynapoint").setLevel(own_level)
    logging.captureWarnings(True)  # Python warnings become log lines in the same format


@contextmanager
def quiet(name: str) -> Iterator[None]:
    """Silence logger ``name`` below CRITICAL for a block: where the caller reports
    a failure itself in one line, the library's own error lines would repeat it.
    Only the output is silenced (a filter on the root's handlers), not the logger:
    handlers on the logger itself still see every record (the metrics count
    refused authentications there, engine.metrics)."""
    def shown(record: logging.LogRecord) -> bool:
        ours = record.name == name or record.name.startswith(name + ".")
        return not ours or record.levelno >= logging.CRITICAL

    # lastResort prints when no handler is configured (a command that never called
    # configure): silenced too
    handlers = [*logging.getLogger().handlers, *filter(None, [logging.lastResort])]
    for h in handlers:
        h.addFilter(shown)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(shown)

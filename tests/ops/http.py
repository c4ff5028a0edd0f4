"""HTTP helpers for the tests that talk to a worker's metrics port or to Prometheus."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any


def get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """Status and body; a 4xx/5xx answer is returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def get_json(url: str) -> tuple[int, Any]:
    code, body = get(url)
    return code, json.loads(body)


def wait_until(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll ``check`` until it returns something truthy (connection errors count as
    not yet); that value, or TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = check()
        except OSError:
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.25)


def poll(url: str, want: int, timeout: float = 60.0) -> Any:
    """The JSON body of ``url`` once it answers with status ``want``."""
    return wait_until(f"{url} to answer {want}",
                      lambda: (r := get_json(url))[0] == want and r[1], timeout)

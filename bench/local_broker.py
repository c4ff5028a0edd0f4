"""The benchmarks' local broker: one helper for every script that needs one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from engine.devtools import broker as devbroker
from engine.devtools import security
from engine.kafka.client_config import ENV


def start(data_dir: Path, **kwargs: Any) -> devbroker.Broker:
    """A local broker on a free port, its data in ``data_dir`` (``kwargs`` as
    ``engine.devtools.broker.start``). The local broker is secured (SCRAM, ACLs), and
    a run's topic prefixes have no ACLs of their own: this process and every worker
    process it starts authenticate as admin."""
    broker = devbroker.start(devbroker.free_port(), data_dir=data_dir, **kwargs)
    os.environ[ENV] = str(broker.credentials(security.ADMIN))
    return broker

import asyncio
import threading
import time
from pathlib import Path

import pytest

from engine.tools.collect import collect
from tests.streams.harness import make_scenario, publish, topics_for, worker
from tests.streams.test_poison import _inject

pytestmark = pytest.mark.kafka


@pytest.mark.parametrize("delay", [0.0, 0.3, 1.0, 3.0, 6.0])
def test_late_worker(kafka_broker, topic_prefix, tmp_path: Path, tmp_path_factory, delay) -> None:
    sc = make_scenario(tmp_path_factory.mktemp("poison-campaign"), 200, 2000, seed=11)
    bootstrap, prefix = kafka_broker.bootstrap, topic_prefix()
    t = threading.Thread(target=publish, args=(bootstrap, prefix, sc, tmp_path / "m.parquet",
                                               1, 2000.0))
    t.start()
    time.sleep(0.5)
    sent = asyncio.run(_inject(bootstrap, prefix))
    t.join()
    time.sleep(delay)
    w = worker(bootstrap, prefix, tmp_path).start()
    try:
        stats: dict = {}
        grants, rejections = asyncio.run(collect(
            bootstrap, topics_for(prefix), expect=sc.expected_outcomes + 11,
            idle_timeout=20.0, stats=stats))
    finally:
        w.stop()
    def src(name, i=None):
        topic, part, off = sent[name]
        return f"{topic}/{part}/{off}" + (f"#{i}" if i is not None else "")
    rej = {r["source"]: r for r in rejections.to_pylist()}
    grt = {g["source"]: g for g in grants.to_pylist()}
    info = (stats, rej.get(src("chunk", 0)), len(grt) + len(rej), sc.expected_outcomes + 11)
    assert src("chunk", 0) in grt, info
    assert src("no_key") in grt, info
    assert src("wrong_key") in grt, info

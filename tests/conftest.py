import os
import pathlib
import sys

# The project root, so `tests.*` plugin modules import however pytest is invoked.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

# The tests replay the 2020 campaign through Kafka. Kafka counts retention from the
# record timestamp, which is business time (received_at), so with the shipped 7 days
# the broker's retention check would delete rolled 2020 segments mid-test. Production
# replays historical data from the archive instead (docs/PRIVACY.md); the retention
# tests (tests/archive/) set their own.
os.environ.setdefault("MYNAPOINT_INPUT_RETENTION", "P36500D")

pytest_plugins = ["tests.kafka_fixtures"]

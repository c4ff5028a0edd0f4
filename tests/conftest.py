import pathlib
import sys

# The project root, so `tests.*` plugin modules import however pytest is invoked.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

pytest_plugins = ["tests.kafka_fixtures"]

"""mynapoint-engine: settlement of the Mynapoint cashless-payment points program.

Sub-packages:

- ``engine.rules``    pure decision and points logic (no I/O, no clock, no globals)
- ``engine.config``   campaign and operator registry (TOML, shipped defaults)
- ``engine.io``       readers (JSON Lines, Parquet, Arrow IPC) and output writers
- ``engine.kafka``    Kafka client plumbing: client properties, topics, partitioning
- ``engine.streams``  the streaming worker: decode, decide, state, recovery
- ``engine.tools``    file tools: settle, compare, publish, collect, generate, demo
- ``engine.devtools`` local broker/cluster and worker process for demo and tests
- ``engine.metrics``  Prometheus metrics
"""

__version__ = "0.1.0"

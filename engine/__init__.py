"""mynapoint-engine: settlement of the Mynapoint cashless-payment points program.

Sub-packages:

- ``engine.rules``    pure decision and points logic (no I/O, no clock, no globals)
- ``engine.config``   campaign and operator registry (TOML, shipped defaults)
- ``engine.io``       readers (JSON Lines, Parquet, Arrow IPC) and output writers
- ``engine.ledger``   offline ``settle`` pipeline
- ``engine.kafka``    local single-node Kafka broker management
- ``engine.streams``  the streaming worker, publisher and collector
- ``engine.metrics``  Prometheus metrics
"""

__version__ = "0.1.0"

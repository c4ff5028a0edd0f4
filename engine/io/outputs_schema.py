"""Arrow schemas of the output files ``out/grants.parquet`` and ``out/rejections.parquet``.

They mirror ``schemas/grant.schema.json`` and ``schemas/rejection.schema.json`` (the
Kafka JSON form) column for column; ``tests/test_schemas.py`` keeps the two in step.
Kept in a module of their own, free of heavy imports, so that readers of the output
files can import the contract without the engine.

>>> GRANT_SCHEMA.field("occurred_at").type
TimestampType(timestamp[us, tz=UTC])
>>> REJECTION_SCHEMA.field("mykey_id").nullable
True
"""

from __future__ import annotations

import pyarrow as pa

# Instants are kept to the microsecond in UTC, like the engine's integer clock.
TIMESTAMP = pa.timestamp("us", tz="UTC")

GRANT_SCHEMA = pa.schema([
    pa.field("grant_id", pa.string(), nullable=False),
    pa.field("campaign", pa.string(), nullable=False),
    pa.field("mykey_id", pa.string(), nullable=False),
    pa.field("operator_id", pa.string(), nullable=False),
    pa.field("txn_id", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("amount", pa.int64(), nullable=False),
    pa.field("points", pa.int64(), nullable=False),
    pa.field("cumulative_points", pa.int64(), nullable=False),
    pa.field("capped", pa.bool_(), nullable=False),
    pa.field("occurred_at", TIMESTAMP, nullable=False),
    pa.field("source", pa.string(), nullable=False),
])

REJECTION_SCHEMA = pa.schema([
    pa.field("record_type", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("detail", pa.string(), nullable=False),
    # null where the input lacked the field, had a non-string, or held a redacted value
    pa.field("txn_id", pa.string(), nullable=True),
    pa.field("operator_id", pa.string(), nullable=True),
    pa.field("mykey_id", pa.string(), nullable=True),
    pa.field("source", pa.string(), nullable=False),
])

"""Finance (FINANCE_RULES.md, version 1): the immutable DuckDB ledger of every
outcome, monthly statements, the final settlement, claim reconciliation, ledger
comparison (what-if), the HTML report, and the exactly-once Kafka sink."""

"""Kafka client plumbing shared by the worker, the tools and finance: client
properties (SASL/TLS), topic names, partitioning and creation."""

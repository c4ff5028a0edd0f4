"""Development tools, not part of the deployed engine: a local Kafka broker or
cluster from Maven Central jars (loopback only, SASL/SCRAM and ACLs on) and a
worker run as a child process for the demo, tests and benchmarks."""

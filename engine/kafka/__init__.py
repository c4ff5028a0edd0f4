"""A local single-node Kafka broker (KRaft, loopback only) from Maven Central jars."""

"""Production plumbing: Cassandra sessions and migrations, Kafka admin, Flink job submission."""

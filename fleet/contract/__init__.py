"""What devices and jobs agree on: topics, payload validation, Kafka envelopes."""

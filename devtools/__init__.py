"""Developer tooling, never imported by production code: the local stack, the demo, the simulator."""

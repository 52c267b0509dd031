"""The learner: training loops that update a policy's weights (supervised warm start, SPO)."""

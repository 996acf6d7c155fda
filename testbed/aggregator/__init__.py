"""The aggregator role: round loop, deadlines, liveness, aggregation through a strategy, evaluation."""

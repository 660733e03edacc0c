"""Small infrastructure that knows nothing of effects: one-shot flags, log throttling."""

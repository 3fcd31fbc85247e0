"""MLflow tracking: the one tracking URI, server checks, the per-trial runs, and the figures logged."""

"""MLflow mechanics every room's writer shares: tracking URIs and local stores, metric names, paged
run searches, redacted artifact logging. Each room (study, sweep, pre-training) owns its own writer."""

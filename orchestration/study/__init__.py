"""A study: its spec (YAML), the trials it expands to and their ids, compute estimates, pre-training
stages, the data trials read, what a trial runs, the Ray Tune driver and the study's MLflow writer."""

"""Launchers: how recon reaches a cluster (Ray Jobs on a running cluster; Slurm; Kubernetes)."""

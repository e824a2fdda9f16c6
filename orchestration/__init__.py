"""Orchestration: study specs, Ray Train pre-training, Ray Tune grids, MLflow, tables, the CLI.

The only package that imports Ray and MLflow; it imports ``models`` and ``data_prep``, never the reverse.
"""

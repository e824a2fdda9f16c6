"""One module per command group; each exposes ``register(subparsers)``.

Modules import heavy libraries (ray, torch, mlflow, spacy) inside their handlers so that
``recon --help`` and the data commands start quickly.
"""
COMMAND_MODULES: tuple[str, ...] = (
    "recon.orchestration.commands.corpus",
    "recon.orchestration.commands.kg",
    "recon.orchestration.commands.pretrain",
    "recon.orchestration.commands.data",
    "recon.orchestration.commands.train",
    "recon.orchestration.commands.study",
    "recon.orchestration.commands.jobs",
    "recon.orchestration.commands.export",
    "recon.orchestration.commands.sweep",
)

"""One module per command group; each exposes ``register(subparsers)``.

Modules import heavy libraries (ray, torch, mlflow, spacy) inside their handlers so that
``recon --help`` and the data commands start quickly.
"""
COMMAND_MODULES: tuple[str, ...] = (
    "orchestration.commands.corpus",
    "orchestration.commands.pretrain",
    "orchestration.commands.data",
    "orchestration.commands.train",
    "orchestration.commands.study",
)

"""One module per command group; each exposes ``register(subparsers)``.

Modules import heavy libraries (ray, torch, mlflow, spacy) inside their handlers so that
``recon --help`` and the data commands start quickly.
"""
COMMAND_MODULES: tuple[str, ...] = (
    "recon.orchestration.cli.commands.corpus",
    "recon.orchestration.cli.commands.kg",
    "recon.orchestration.cli.commands.pretrain",
    "recon.orchestration.cli.commands.data",
    "recon.orchestration.cli.commands.train",
    "recon.orchestration.cli.commands.study",
    "recon.orchestration.cli.commands.submit",
    "recon.orchestration.cli.commands.jobs",
    "recon.orchestration.cli.commands.export",
    "recon.orchestration.cli.commands.sweep",
)

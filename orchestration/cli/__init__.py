"""The command line: ``recon`` (``main``), flags generated from config fields, and one module per
command group under ``commands/``."""

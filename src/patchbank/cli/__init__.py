"""The ``patchbank`` command line."""
from patchbank.cli.main import cli, main

__all__ = ["cli", "main"]

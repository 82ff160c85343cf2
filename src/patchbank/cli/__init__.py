"""The ``patchbank`` command line: :data:`cli` (the click group) and :func:`main` (the console
script).  See :mod:`patchbank.cli.main` for the error contract and the module map."""
from patchbank.cli.main import cli, main

__all__ = ["cli", "main"]

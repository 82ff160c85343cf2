"""``python -m patchbank.cli``: the same as the ``patchbank`` command."""
from patchbank.cli.main import main

main()

"""The exceptions a user can act on (bad path, corrupt image, wrong model file, bad setting).

The CLI prints ``error: <message>`` on one line and exits 2 for these; anything else is a bug and
keeps its traceback.
"""
from __future__ import annotations


class PatchbankError(Exception):
    """A problem with the user's input, reported as one line naming the thing at fault.

    Raise it (or a subclass) for anything the user can fix; the message must fit on one line and
    name the file, folder or setting at fault.  Never raise it for a bug.
    """


class ConfigError(PatchbankError, ValueError):
    """A bad :class:`~patchbank.config.Config` value, an unknown field or an unknown preset.

    Args:
        field: the Config field at fault (``"preset"`` for an unknown preset name; the unknown
            name itself for an unknown field).  Front ends use it to name their own option
            (the CLI reports ``--kappa`` for ``kappa``).
        message: what is wrong, without the field name (``"must be in (0, 1], got 2.0"``).
        related: other fields that take part in a cross-field rule (``crop_size`` against
            ``image_size``), so a front end can name their options too.

    ``str(error)`` is ``"<field>: <message>"``.  It subclasses ``ValueError`` so code that catches
    ``ValueError`` keeps working, and :class:`PatchbankError` so the CLI reports it as one line.
    """

    def __init__(self, field: str, message: str, *, related: tuple[str, ...] = ()):
        super().__init__(field, message)
        self.field = field
        self.message = message
        self.related = tuple(related)

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"

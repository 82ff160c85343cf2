"""One exception type for every problem a user can fix (bad path, corrupt image, wrong model file).

The CLI prints ``error: <message>`` on one line and exits 2 for these; anything else is a bug and
keeps its traceback.
"""


class PatchbankError(Exception):
    """A problem with the user's input, reported as one line naming the thing at fault."""

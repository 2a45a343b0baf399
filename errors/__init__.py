"""What the user can fix, told apart from everything else (a bug).

`UserError`: a bad value on the command line or in a config file, an input file that is missing
or unreadable, a dataset without the layout it should have, a request that contradicts itself.
The command line prints its message as one line, "cxrsweep: error: ...", and exits 2; anything
else that escapes a command is a bug and keeps its traceback (commands/main.py). Every layer may
raise it, so it sits below them all and imports nothing.

`UserError` is a ValueError and `MissingInput` also a FileNotFoundError, so code that catches
the built-in types (an archive's reader listing unreadable files, say) keeps working. The
message names the field, flag or file first and says what is allowed.
"""
from __future__ import annotations


class UserError(ValueError):
    """Bad input that the user can correct; the message alone explains it (no traceback)."""


class MissingInput(UserError, FileNotFoundError):
    """A file or folder the user named (or the command needs) that is not there."""

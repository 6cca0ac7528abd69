"""The one exception type of data_pipeline.

Every bad-input failure (missing folder, corrupt PNG, unknown mask colour, empty split, ...) raises
`DataError` with a message that names the file or field and says what was expected, so the CLI can print
it as one line and a user can fix the data without reading a traceback.
"""
from __future__ import annotations


class DataError(ValueError):
    """Bad input data: the message names the file/field and what was expected."""

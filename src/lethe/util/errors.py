"""User-facing errors: the CLI prints these as one line, without a traceback."""


class LetheError(Exception):
    """A problem with the user's input or environment that the user can fix."""


class DataError(LetheError):
    """A data file is missing, malformed, or has a record that fails validation.

    The message names the file, the record index, the field and what was expected.
    """

    def __init__(self, path, message: str, *, record: int | None = None, field: str | None = None):
        where = str(path)
        if record is not None:
            where += f", record {record}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")
        self.path, self.record, self.field = path, record, field


class ModelError(LetheError):
    """A model could not be found or loaded; the message says what to provide."""


class DivergenceError(LetheError):
    """Training produced a non-finite loss (gradient ascent without a guard diverges)."""

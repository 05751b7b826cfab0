"""Exceptions the library raises. The CLI turns each into a one-line message."""


class VirnucproError(Exception):
    """Base class: its message is shown to the user as is, on one line."""


class InputError(VirnucproError):
    """Bad input data: names the file and, where it applies, the record or line."""


class ModelError(VirnucproError):
    """A model that cannot be found, loaded or trusted."""


class OutputError(VirnucproError):
    """An output directory or file that cannot be (over)written."""


class ModelNotCachedError(ModelError):
    """A hub model or published classifier that is not downloaded yet (and we may not fetch)."""

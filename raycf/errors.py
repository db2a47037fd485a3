"""The one exception type that the CLI turns into a one-line error and exit status 2."""


class RaycfError(Exception):
    """Bad input or an unusable environment; the message is shown to the user as it is."""


class DataError(RaycfError):
    """A ratings file, dataset or split that cannot be used."""


class CheckpointError(RaycfError):
    """A checkpoint that is missing, corrupted or does not fit the model or data."""

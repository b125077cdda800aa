"""Exceptions raised by the learning core, each naming what the user must fix."""


class UnlearnError(Exception):
    """Base class of every error the learning core raises on bad input."""


class UnknownDatasetError(UnlearnError, ValueError):
    """A data set name that is not registered."""


class UnknownModelError(UnlearnError, ValueError):
    """A model architecture name that is not registered."""


class UnknownSampleIdError(UnlearnError, KeyError):
    """Sample ids that are not in the training set."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DuplicateSampleIdError(UnlearnError, ValueError):
    """The same sample id named more than once."""


class CheckpointError(UnlearnError, RuntimeError):
    """A checkpoint that cannot be read or does not match what is asked of it."""


class ConfigError(UnlearnError, ValueError):
    """A configuration value outside what the code supports."""


class DatasetNotFoundError(UnlearnError, FileNotFoundError):
    """A torchvision data set missing from its local root (download was not asked for)."""


class DataSourceError(ConfigError):
    """An own data set (npz file, image folder) whose contents cannot be used as they are."""


class DatasetTooLargeError(DataSourceError):
    """A data set whose inputs would not fit the memory limit (`data.max_bytes`)."""


def preview(items, limit: int = 10) -> str:
    """A short, readable list of offending items for an error message."""
    items = list(items)
    shown = ", ".join(repr(item) for item in items[:limit])
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return f"{shown}{more}"

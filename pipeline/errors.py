"""One error type for bad input, so every reader reports the same way: file, place, problem."""
from __future__ import annotations

from os import PathLike


class InputError(ValueError):
    """A file the pipeline reads is malformed; the message names the file, where, and what."""

    def __init__(self, path: str | PathLike[str], problem: str, *, location: str | None = None) -> None:
        self.path = str(path)
        self.problem = problem
        self.location = location
        where = self.path if location is None else f"{self.path} ({location})"
        super().__init__(f"{where}: {problem}")

    def __reduce__(self) -> tuple:
        # Survives pickling (DataLoader workers, Dask tasks) for every subclass, whatever its __init__.
        return _rebuild, (type(self), self.args, self.__dict__.copy())


class MissingDataError(InputError):
    """A dataset file, image folder or weights file is absent; the message says where to get it."""

    def __init__(self, path: str | PathLike[str], problem: str, *, hint: str, location: str | None = None) -> None:
        self.hint = hint
        super().__init__(path, f"{problem}. {hint}", location=location)


def _rebuild(cls: type[InputError], args: tuple, state: dict) -> InputError:
    error = cls.__new__(cls)
    ValueError.__init__(error, *args)
    error.__dict__.update(state)
    return error

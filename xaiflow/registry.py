"""A tiny name -> class registry shared by every extension point.

Each extension point (image sources, models, attribution methods, feature extractors,
metrics) owns one :class:`Registry`. Entries register themselves with a decorator, and
the test suite loops over ``registry.names()`` so that a new entry is covered by the
shared contract tests without new test code.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from xaiflow.errors import XaiflowError

T = TypeVar("T")


class UnknownEntryError(XaiflowError, KeyError):
    """Raised when a name is not registered; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps a registry key (e.g. ``"folder"``) to the class that implements it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: ``@SOURCES.register("folder")``."""

        def decorate(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return decorate

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(sorted(self._entries)) or "(none)"
            raise UnknownEntryError(f"unknown {self.kind} {name!r}; valid: {valid}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

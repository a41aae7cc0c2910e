"""The contract every plugin of every extension point shares, and the spec that names one in a config.

xaiflow has one kind of extension point, repeated: attribution methods, metrics, feature
extractors, classifiers and feature reducers are each a :class:`~xaiflow.registry.Registry`
of :class:`Plugin` subclasses. What they share lives here, once:

* ``name``: the registry key, and ``citation``: where the idea comes from (travels into
  the workspace's provenance and the report);
* ``Params``: a :class:`PluginParams` model (pydantic) of every parameter, each with a
  default and a ``Field(description=...)``; unknown names are errors, values are frozen.
  ``Plugin(**params)`` validates them (:meth:`Plugin.validate_params`: the error, of the
  family's own class, names the plugin, the parameter and the value, and lists the valid
  names) and keeps them as :attr:`Plugin.params`; :meth:`Plugin.get_params` returns them as
  a plain dict (scikit-learn's habit), so a plugin can be rebuilt from its record;
* :meth:`Plugin.identity_params`: the parameters that change the results, defaults filled
  in, JSON-normalized: what a stored result is compared with on a re-run, so ``{}`` and
  ``{n_steps: 32}`` are the same run. Parameters that only change speed or memory (the
  ``batch_param`` that bounds model evaluations per pass, devices, batch sizes) are named in
  ``runtime_params`` and left out;
* ``quick_params``: parameters for a quick run (fewer samples or steps), which the contract
  checks of :mod:`xaiflow.testing` use, so a new plugin needs no test table entry;
* no parallelism: plugins compute on the arrays or tensors they are given; Dask tasks are
  the runners' business.

Plugins of a lab's own live in its own modules: name them in ``$XAIFLOW_PLUGINS`` and
:func:`load_plugins` imports them, so they register like the built-in ones.

A run config names a plugin with one :class:`PluginSpec` (``{name, key, params}``, or just
the name), whichever the family.
"""

from __future__ import annotations

import json
import re
from abc import ABC
from collections.abc import Iterable
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from xaiflow.errors import XaiflowError
from xaiflow.registry import Registry

#: a key a result is stored under (a Zarr variable or group name): a letter, then letters, digits, _
KEY_PATTERN = r"^[A-Za-z][A-Za-z0-9_]*$"


class PluginError(XaiflowError):
    """A plugin's parameters are invalid; the message names the plugin, the parameter and the value."""


class PluginParams(BaseModel):
    """Base of every plugin's ``Params``: unknown names are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'params'}: {e['msg']} (got {e['input']!r})"
                     for e in exc.errors())


class Plugin(ABC):
    """Base class of every plugin (see the module docstring for the contract)."""

    name: ClassVar[str]
    #: what the family calls one of its plugins, for messages (``"attribution method"``)
    family: ClassVar[str] = "plugin"
    citation: ClassVar[str] = ""
    Params: ClassVar[type[PluginParams]] = PluginParams
    #: the parameter that bounds how many model evaluations run in one pass (speed and memory only)
    batch_param: ClassVar[str | None] = None
    #: other parameters that change speed or memory, not results
    runtime_params: ClassVar[frozenset[str]] = frozenset()
    #: the error class invalid parameters raise (each family has its own, all XaiflowErrors)
    error: ClassVar[type[XaiflowError]] = PluginError
    #: parameters for a quick run (contract checks, smoke tests): valid results, fewer samples or steps
    quick_params: ClassVar[dict[str, Any]] = {}

    params: PluginParams

    def __init__(self, **params: Any) -> None:
        self.params = self.validate_params(params)

    @classmethod
    def validate_params(cls, params: dict[str, Any]) -> PluginParams:
        """``Params(**params)``, else :attr:`error` naming each unknown parameter (with the valid
        ones) or each invalid value (with its field)."""
        what = f"{cls.family} {cls.name!r}"
        try:
            return cls.Params(**params)
        except ValidationError as exc:
            unknown = [str(e["loc"][0]) for e in exc.errors() if e["type"] == "extra_forbidden"]
            if unknown:
                valid = ", ".join(cls.Params.model_fields) or "(none)"
                raise cls.error(f"{what} got unknown parameter(s) {', '.join(map(repr, unknown))}; "
                                f"valid parameters: {valid}") from None
            raise cls.error(f"{what}: invalid parameters: {_problems(exc)}") from None
        except TypeError as exc:  # params is not a mapping of names
            raise cls.error(f"{what}: parameters must be a mapping of names to values ({exc})") from None

    @classmethod
    def skipped_params(cls) -> frozenset[str]:
        """Parameters left out of :meth:`identity_params` (speed and memory only)."""
        return cls.runtime_params | ({cls.batch_param} if cls.batch_param else set())

    @classmethod
    def identity_of(cls, params: dict[str, Any]) -> dict[str, Any]:
        """:meth:`identity_params` of ``params`` without building the plugin."""
        full = cls.validate_params(params).model_dump(mode="json")
        return json.loads(json.dumps({k: v for k, v in full.items() if k not in cls.skipped_params()},
                                     sort_keys=True))

    def identity_params(self) -> dict[str, Any]:
        """Every parameter that changes the results, defaults filled in, JSON-normalized."""
        return self.identity_of(self.params.model_dump())

    def get_params(self) -> dict[str, Any]:
        """All parameters (defaults filled in) as a plain dict: ``type(p)(**p.get_params())`` rebuilds it."""
        return self.params.model_dump()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.model_dump().items())
        return f"{type(self).__name__}({args})"


class PluginSpec(BaseModel):
    """One plugin of a run: its registry name, its parameters, and the key its results are stored under.

    Written ``{name: integrated_gradients, key: ig64, params: {n_steps: 64}}``, or just the
    name. ``key`` defaults to the name; another key stores the same plugin with other
    parameters beside it.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="registry name of the plugin")
    key: str = Field("", pattern=rf"{KEY_PATTERN}|^$",
                     description="name its results are stored under (default: name)")
    params: dict[str, Any] = Field(default_factory=dict, description="the plugin's parameters (see its docs)")

    @model_validator(mode="before")
    @classmethod
    def _name_only(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _default_key(self) -> "PluginSpec":
        if not self.key:
            if not re.match(KEY_PATTERN, self.name):
                raise ValueError(f"name {self.name!r} cannot be a stored key; set `key:` (letters, digits, _)")
            self.key = self.name
        return self


def unique_keys(specs: Iterable[PluginSpec], what: str) -> None:
    """Refuse two specs storing under one key (a ValueError, as pydantic validators raise)."""
    keys = [s.key for s in specs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"{what} store under the same key {dup}; give each a distinct `key`")


def registered(specs: Iterable[PluginSpec], registry: Registry[Any]) -> None:
    """Refuse names the registry does not know (a ValueError listing the valid names)."""
    unknown = sorted({s.name for s in specs if s.name not in registry})
    if unknown:
        raise ValueError(f"unknown {registry.kind}(s) {unknown}; valid: {', '.join(registry.names())}")


#: comma-separated modules to import so their plugins register (``my_lab.methods,my_lab.sources``)
PLUGINS_ENV = "XAIFLOW_PLUGINS"


def load_plugins(modules: str | None = None) -> list[str]:
    """Import the plugin modules named in ``modules`` (default: ``$XAIFLOW_PLUGINS``); each registers its
    entries on import (``@METHODS.register(...)``). Returns the module names; idempotent.

    The CLI, the flows and the test suite call it, so a lab's own method, metric, extractor or
    image source works everywhere once its module is importable (on every Dask worker too) and
    named here. A module that cannot be imported is a :class:`PluginError` naming it.
    """
    import importlib
    import os

    names = [m.strip() for m in (os.environ.get(PLUGINS_ENV, "") if modules is None else modules).split(",")
             if m.strip()]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise PluginError(f"{PLUGINS_ENV}: cannot import plugin module {name!r}: {e}") from None
    return names

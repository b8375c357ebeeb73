"""A job's own code: "package.module:function" names (model.factory, data.factory), checked, then imported.

`factory_allowed` reads only the name, so the service can refuse a factory before anything is imported;
`load_factory` imports the module and returns the function, with errors that name the config field.
"""
from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from typing import Any

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


class FactoryError(ValueError):
    """A factory that cannot be named, imported or called; the message starts with the config field."""


def split_factory(name: str, field: str) -> tuple[str, str]:
    """("package.module", "function") of a factory name; FactoryError naming `field` when it is not one."""
    if not NAME.match(name):
        raise FactoryError(f"{field}: {name[:200]!r} is not of the form \"package.module:function\"")
    module, _, function = name.partition(":")
    return module, function


def factory_allowed(name: str, prefixes: Sequence[str]) -> bool:
    """Whether the factory's module is one of `prefixes` or inside one (prefix "examples" allows
    "examples.tabular", not "examples_x"). Reads the name only; imports nothing."""
    if not NAME.match(name):
        return False
    module = name.partition(":")[0]
    return any(module == p or module.startswith(p + ".") for p in prefixes if p)


def load_factory(name: str, field: str) -> Callable[..., Any]:
    """The function a factory name points at, imported."""
    module_name, function = split_factory(name, field)
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # an ImportError, or whatever the module raises while it is imported
        raise FactoryError(f"{field}: cannot import {module_name!r} ({type(err).__name__}: {err}); install it "
                           "on every node or ship it with cluster.runtime_env (py_modules, working_dir)") from None
    fn = getattr(module, function, None)
    if not callable(fn):
        raise FactoryError(f"{field}: {module_name!r} has no function {function!r}")
    return fn  # type: ignore[no-any-return]

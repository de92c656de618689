"""Connector types, discovered through the entry-point group `syncd.connectors`.

A third party adds a connector by shipping a distribution that declares

```toml
[project.entry-points."syncd.connectors"]
mytype = "mypackage.connector:MyConnector"
```

Nothing is cached: a reload (SIGHUP) sees what is installed now. A type that fails to import is
reported as an error string instead of taking the daemon down; the configuration loader turns it
into a configuration error.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

__all__ = ["ENTRY_POINT_GROUP", "load_connector_types"]

ENTRY_POINT_GROUP = "syncd.connectors"


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())  # one line, whatever the exception carried
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_connector_types() -> tuple[dict[str, type], list[str]]:
    """Every installed connector type by name, and one error line per type that failed to load."""
    types: dict[str, type] = {}
    origin: dict[str, EntryPoint] = {}
    errors: list[str] = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name, e.value)):
        if ep.name in origin:
            if origin[ep.name].value != ep.value:
                errors.append(
                    f"connectors: type {ep.name!r} is registered twice "
                    f"({origin[ep.name].value} and {ep.value})"
                )
            continue
        origin[ep.name] = ep
        try:
            obj = ep.load()
        except Exception as exc:
            errors.append(f"connectors: type {ep.name!r} failed to load: {_describe(exc)}")
            continue
        if not isinstance(obj, type):
            errors.append(f"connectors: type {ep.name!r} failed to load: {ep.value} is not a class")
            continue
        types[ep.name] = obj
    return types, errors

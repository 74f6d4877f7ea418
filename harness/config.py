"""Configuration: built-in defaults overlaid with `[tool.shutdown-harness]` of a pyproject.toml.

The built-in defaults live in `harness/data/defaults.toml` (same shape as the pyproject table).
The user's table is found in `./pyproject.toml` (or the file given with `--config`); its keys
replace the defaults', except the `strategies`, `gates`, `clients`, `presets` and `services`
tables, which are merged by name. Declared services (`[tool.shutdown-harness.services.NAME]`)
are checked here: a bad declaration is a one-line UsageError before anything runs.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from shutdown_harness.errors import UsageError
from shutdown_harness.service_kinds import declared

__all__ = ["load", "DEFAULTS_PATH"]

DEFAULTS_PATH = Path(__file__).parent / "data" / "defaults.toml"
_MERGED_TABLES = ("strategies", "gates", "clients", "presets", "services")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path} is not valid TOML: {e}") from None


def load(path: Path | None = None) -> dict[str, Any]:
    """The effective configuration: defaults, then the user's pyproject table."""
    config: dict[str, Any] = _read_toml(DEFAULTS_PATH) if DEFAULTS_PATH.exists() else {}
    if path is None:
        candidate = Path.cwd() / "pyproject.toml"
        path = candidate if candidate.exists() else None
    elif not path.exists():
        raise UsageError(f"config file not found: {path}")
    if path is not None:
        user = _read_toml(path).get("tool", {}).get("shutdown-harness", {})
        for key, value in user.items():
            if key in _MERGED_TABLES:
                if not isinstance(value, dict) or (key != "gates" and not all(
                    isinstance(v, dict) for v in value.values()
                )):  # gates are checked by harness/gates.py (a gate can be a list)
                    raise UsageError(f"{path}: [tool.shutdown-harness] {key} must be a table"
                                     f" of tables ([tool.shutdown-harness.{key}.NAME])")
                config[key] = {**config.get(key, {}), **value}
            else:
                config[key] = value
    declared(config)
    return config

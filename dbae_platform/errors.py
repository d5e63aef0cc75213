"""The error types of the platform's own settings that the command line reports as bad input (exit 2, one line).

`ConfigError` lives here, below both `config` (which raises it while validating) and `storage` (which raises it when a
runs directory is not shared by the cluster's nodes), so neither imports the other for it.
"""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """An invalid configuration value, reported in one line: key, value and what is allowed."""

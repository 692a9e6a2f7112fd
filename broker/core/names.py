"""Provider names: one rule for the config, the state directory's file names and metrics.

A provider's name appears in URLs (``/token/<name>``), environment variable names,
file names (``<state_dir>/<name>.json``) and metric labels, so it is kept boring.
"""

from __future__ import annotations

import re

PROVIDER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
"""1-63 characters of a-z, 0-9, ``_`` and ``-``, starting with a letter or digit; use
``fullmatch``."""

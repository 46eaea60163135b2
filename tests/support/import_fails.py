"""A worker module that fails to import, counting every attempt."""

from __future__ import annotations

from support import held

held.IMPORT_ATTEMPTS.append("import_fails")
raise RuntimeError("this module cannot be imported")

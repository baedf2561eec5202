"""Passwords out of what advbench prints: a store URL such as
``postgresql://user:secret@host/db`` is shown as ``postgresql://user:***@host/db`` in the run
summary, the ``next:`` hint, error lines and logs."""

from __future__ import annotations

import re

# scheme://user:password@  (greedy up to the authority's last "@": a password may hold one)
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*):(?P<password>[^/\s]*)@")
# libpq's ?password=... and key=value "password=..." forms
_PASSWORD_PARAM = re.compile(r"(?P<head>(?:[?&;\s]|^)password=)(?P<password>[^&;\s]*)", re.IGNORECASE)

MASK = "***"


def mask_passwords(text: str) -> str:
    """``text`` with the password of every URL (and ``password=`` parameter) in it masked."""
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return _PASSWORD_PARAM.sub(lambda m: f"{m['head']}{MASK}", text)

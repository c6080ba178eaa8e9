"""Why a path a user named may be missing inside the environment, in words for the error that names it.

In rootfs mode (a host older than glibc 2.39) ``tools/env exec`` runs commands in a Debian 13 root filesystem
that sees the checkout, ``../shared`` and the host paths named on its command line (or in ``LONGTAIL_BIND``),
bound in at their own paths; it sets ``LONGTAIL_ENV_MODE=rootfs`` and ``LONGTAIL_BOUND_PATHS`` (colon-separated).
A host folder named only inside a script or a configuration file is not seen there.
"""

from __future__ import annotations

import os

# The checkout and ../shared: the environment always sees them.
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SEEN = (_CHECKOUT, os.path.join(os.path.dirname(_CHECKOUT), "shared"))


def _under(path: str, folders) -> bool:
    return any(path == d or path.startswith(d.rstrip(os.sep) + os.sep) for d in folders if d)


def _unseen_empty_folder(path: str) -> bool:
    """An empty folder no bind covers: in the root filesystem, the mount point another `tools/env exec` made for
    its own bind of that path (removed when the last one ends)."""
    if not os.path.isdir(path) or _under(path, os.environ.get("LONGTAIL_BOUND_PATHS", "").split(":")):
        return False
    with os.scandir(path) as entries:
        return next(entries, None) is None


def path_hint(path) -> str:
    """A sentence on how to make ``path`` seen, when the environment is tools/env's root filesystem and the path is
    not there (missing, or an empty folder that no bind of this command covers), nor in the checkout or ../shared
    (always seen); empty otherwise."""
    if os.environ.get("LONGTAIL_ENV_MODE") != "rootfs" or not path or "://" in str(path):
        return ""
    p = os.path.abspath(os.fspath(path))
    if _under(p, _SEEN) or (os.path.exists(p) and not _unseen_empty_folder(p)):
        return ""
    return (f"The environment is a Debian 13 root filesystem that sees the checkout and the paths named on the "
            f"`tools/env exec` command line: name {p} there as an absolute path, or set LONGTAIL_BIND={p}")


def with_path_hint(message: str, path) -> str:
    """``message``, followed by :func:`path_hint` when there is one."""
    hint = path_hint(path)
    return f"{message}. {hint}" if hint else message

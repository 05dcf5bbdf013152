"""Where crmdb's SQL, migrations and policies live.

In a source checkout (and an editable install) they sit at the top of the
repository, where DBAs read them; a wheel carries them in crmdb/_resources.
"""

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """The directory `name` (sql, migrations, policies, rules, automations, emails or ext)."""
    for candidate in (_PACKAGE / "_resources" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"crmdb resource directory {name!r} not found next to {_PACKAGE}")


def sql_path(name: str) -> Path:
    """A file under sql/."""
    return resource_dir("sql") / name

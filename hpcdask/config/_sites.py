"""Site profiles: YAML files with a `site:` block (name, system, description) and config keys.

A profile is one configuration layer, checked like any other, that sits just above the package
defaults. Users' own profiles (`jobqueue.site-dirs`, `~/.config/hpcdask/sites/`) shadow the shipped
ones of the same name, and a path to a YAML file works anywhere a name does.
"""

from __future__ import annotations

import os
from pathlib import Path

from ._schema import ConfigError, load_file

PACKAGED = Path(__file__).resolve().parent / "sites"  # shipped profiles (package data)
USER_SITES = "~/.config/hpcdask/sites"
_REQUIRED = ("name", "system", "description")


def site_dirs(extra: list[str] | None = None) -> list[Path]:
    """Folders searched for profiles, first match wins."""
    dirs = [Path(os.path.expanduser(d)) for d in (extra or [])]
    return dirs + [Path(os.path.expanduser(USER_SITES)), PACKAGED]


def find_site(site: str, extra_dirs: list[str] | None = None) -> Path:
    """The profile file for a name (`gadi`) or a path (`./mysite.yaml`)."""
    path = Path(os.path.expanduser(site))
    if path.suffix in (".yaml", ".yml") or os.sep in site:
        if not path.is_file():
            raise ConfigError(f"site profile file {path} does not exist")
        return path
    for d in site_dirs(extra_dirs):
        for suffix in (".yaml", ".yml"):
            if (d / f"{site}{suffix}").is_file():
                return d / f"{site}{suffix}"
    known = ", ".join(s["name"] for s in list_sites(extra_dirs)) or "none"
    raise ConfigError(f"unknown site {site!r}; known sites: {known} (or give a YAML file's path)")


def load_site(path: str | Path) -> dict:
    """{name, system, description, url, path, config} of one profile file."""
    data = load_file(path)
    meta = data.pop("site", None)
    if not isinstance(meta, dict):
        raise ConfigError(f"{path}: a site profile starts with a 'site:' block "
                          f"({', '.join(_REQUIRED)})")  # fmt: skip
    missing = [k for k in _REQUIRED if not meta.get(k)]
    if missing:
        raise ConfigError(f"{path}: 'site:' block lacks {', '.join(missing)}")
    unknown = set(meta) - {*_REQUIRED, "url", "notes"}
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) in 'site:' block: {', '.join(sorted(unknown))}")
    return {**meta, "url": meta.get("url"), "path": Path(path), "config": data}


def list_sites(extra_dirs: list[str] | None = None) -> list[dict]:
    """Every profile found, one per name (the first found shadows the rest), sorted by name."""
    seen: dict[str, dict] = {}
    for d in site_dirs(extra_dirs):
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            if p.suffix in (".yaml", ".yml") and p.stem not in seen:
                meta = load_site(p)
                meta.pop("config")
                seen[p.stem] = meta
    return [seen[k] for k in sorted(seen)]

"""The names in the sites folder: which are site files, which are the defaults or a
folder of the sites' files, and why any other entry is not read. Pure names and one
`is_dir` each; `loading` reads what these let through.
"""

from __future__ import annotations

import os

SUFFIXES = (".yaml", ".yml")
DEFAULTS = "_defaults.yaml"
"""The sites folder's shared defaults (`intake/defaults`): never a site (no DNS label)."""


def is_junk(filename: str) -> bool:
    """Editors' and tools' leftovers (dotfiles, `~`, swap and temp files, vim's `4913`),
    and the `..data` links of a Kubernetes ConfigMap: skipped in silence."""
    return filename.startswith(".") or filename.endswith(("~", ".swp", ".swx", ".tmp")) or (
        filename == "4913")


def is_site_name(filename: str) -> bool:
    """Names that are read as site files: `NAME.yaml` or `NAME.yml`, not junk."""
    return filename.endswith(SUFFIXES) and not is_junk(filename)


def is_files_folder(item: os.DirEntry[str]) -> bool:
    """`_files/`: a folder of the files sites name by relative paths (pages, certificates),
    skipped in silence; `_` starts no site's name (a DNS label)."""
    try:
        return item.name.startswith("_") and item.is_dir()
    except OSError:
        return False


def ignored_reason(item: os.DirEntry[str]) -> str:
    stem = item.name.rsplit(".", 1)[0]
    try:
        folder = item.is_dir()
    except OSError:
        folder = False
    if folder:
        return "ignored: a folder; only NAME.yaml files directly in the sites folder are read"
    if item.name.lower().endswith(SUFFIXES):
        return f"ignored: the suffix must be lower-case; rename it to {stem.lower()}.yaml"
    if item.name.lower().endswith(".json"):
        return f"ignored: site files are YAML; rename it to {stem}.yaml (JSON is YAML too)"
    return "ignored: not a site file; site files are named NAME.yaml"

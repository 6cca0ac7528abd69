"""Search spaces shipped with lunartune: YAML files users read and edit.

`--space NAME` picks `search_spaces/NAME.yaml`; anything with a slash or a .yaml/.yml suffix is a path.
This package only locates files; parsing and validation live in `tuner/space.py`.
"""
from __future__ import annotations

from pathlib import Path

SPACES_DIR = Path(__file__).resolve().parent


def available() -> list[str]:
    """Names of the shipped spaces (file stems), sorted."""
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def resolve(name_or_path: str) -> Path:
    """'default' -> the shipped default.yaml; 'my/space.yaml' -> that file. Raises FileNotFoundError."""
    looks_like_path = "/" in name_or_path or name_or_path.endswith((".yaml", ".yml"))
    path = Path(name_or_path).expanduser() if looks_like_path else SPACES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        shipped = ", ".join(available())
        raise FileNotFoundError(f"search space {name_or_path!r}: no file {path} "
                                f"(shipped spaces: {shipped}; or give a path to a .yaml file)")
    return path.resolve()

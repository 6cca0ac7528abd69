"""Argument checks shared by the bench scripts: a bad flag is refused in one line before any work starts
(a bench runs for minutes; a typo found only at the end loses them)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def description(doc: str) -> str:
    """A script's --help description: the first paragraph of its docstring (its first line may stop
    mid-sentence; argparse refills the paragraph's lines)."""
    return doc.split("\n\n")[0]


def int_at_least(minimum: int, maximum: int | None = None):
    """An argparse type: an integer in [minimum, maximum]; argparse names the flag in the message."""
    def parse(text: str) -> int:
        wanted = f"an integer >= {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {value}")
        return value
    return parse


def output_file(parser: argparse.ArgumentParser, flag: str, path: str | Path) -> Path:
    """parser.error unless `path` can be written as a file: not a folder, and a parent that is a writable
    folder or can be made in one."""
    path = Path(path)
    if path.is_dir():
        parser.error(f"{flag} {path}: is a folder; expected a file path")
    _check_folder(parser, flag, path.parent, path)
    return path


def output_dir(parser: argparse.ArgumentParser, flag: str, path: str | Path) -> Path:
    """parser.error unless `path` is a writable folder or can be made in one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        parser.error(f"{flag} {path}: exists and is not a folder; expected a folder")
    _check_folder(parser, flag, path, path)
    return path


def _check_folder(parser, flag: str, folder: Path, path: Path) -> None:
    existing = folder.absolute()
    while not existing.exists():  # the nearest existing ancestor is where the folders would be made
        existing = existing.parent
    if not existing.is_dir():
        parser.error(f"{flag} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        parser.error(f"{flag} {path}: cannot write in {existing}")


def fail(prog: str, err: Exception) -> int:
    """One line on stderr for an expected error of the project's own code (bad data, config, space): exit 1."""
    print(f"{prog}: {err}", file=sys.stderr)
    return 1

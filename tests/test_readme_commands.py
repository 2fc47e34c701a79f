"""Every ``python infer.py ...`` and ``python train.py ...`` line of the README and docs/ parses:
a renamed flag or command fails here, not in a reader's terminal."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from viewdiff.commands.infer import build_parser
from viewdiff.commands.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _commands(page: Path, entry: str) -> list[str]:
    """The ``python <entry> ...`` lines of a page's code blocks, continuations joined."""
    found, in_code, current = [], False, ""
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        if not in_code:
            continue
        text = re.sub(r"\s+#.*$", "", line).strip()  # a trailing comment
        if current:
            current += " " + text
        elif text.startswith(f"python {entry} "):
            current = text
        if current and current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        if current:
            found.append(current)
            current = ""
    return found


def _argv(command: str) -> list[str] | None:
    """The arguments of a documented command; None for a pattern ([...], ...) not a command."""
    if "[" in command or "..." in command or "<" in command:
        return None
    return shlex.split(command)[2:]


INFER = [(p.name, c) for p in PAGES for c in _commands(p, "infer.py") if _argv(c) is not None]
TRAIN = [(p.name, c) for p in PAGES for c in _commands(p, "train.py") if _argv(c) is not None]


def test_the_pages_hold_commands() -> None:
    """The scan finds the README's commands (an empty scan would pass anything)."""
    readme = [command for page, command in INFER + TRAIN if page == "README.md"]
    assert len(readme) >= 8, readme


@pytest.mark.parametrize(("page", "command"), INFER)
def test_documented_infer_commands_parse(page: str, command: str) -> None:
    """The documented flags and subcommands exist (argparse exits 2 on a wrong one)."""
    build_parser().parse_args(_argv(command))


@pytest.mark.parametrize(("page", "command"), TRAIN)
def test_documented_train_commands_resolve_their_config(
    page: str, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The documented preset and key=value overrides load (train.py --print-config)."""
    argv = _argv(command)
    assert argv is not None
    if "--print-config" not in argv:
        argv.append("--print-config")
    assert train_main(argv) == 0
    assert "train:" in capsys.readouterr().out


def test_a_wrong_flag_fails_the_check() -> None:
    """The check itself can fail."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(_argv("python infer.py sample --checkpoint M --promt x --out o"))

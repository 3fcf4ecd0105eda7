"""The README is a manual (issue 51): short, in short paragraphs, its links resolve, and every
command its quickstarts show exists with the flags they use."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# Named by the README, arriving from other branches of issue 51; drop each once it is merged.
PENDING_FILES: set[str] = set()  # files, commands, flags a README names before they land
PENDING_COMMANDS: set[str] = set()
PENDING_FLAGS: set[str] = set()
PENDING_VALUES: set[tuple[str, str]] = set()


def _prose_blocks(text: str) -> list[list[str]]:
    """Runs of non-blank lines outside code fences and tables."""
    blocks, block, fenced = [], [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            block = []
            continue
        if fenced or line.startswith("|") or not line.strip():
            if block:
                blocks.append(block)
            block = []
            continue
        block.append(line)
    if block:
        blocks.append(block)
    return blocks


def test_readme_is_at_most_500_lines_and_no_paragraph_is_over_12():
    text = README.read_text()
    assert len(text.splitlines()) <= 500
    long = [b[0][:60] for b in _prose_blocks(text) if len(b) > 12]
    assert long == []


def test_readme_links_resolve_to_files_of_the_repository():
    text = README.read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert "docs/experiments.md" in local and "docs/contact-sheet.png" in local
    missing = [link for link in local if not (ROOT / link).exists()]
    assert sorted(set(missing) - PENDING_FILES) == []


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def _command_lines(text: str) -> list[list[str]]:
    """Each ``refinery ...`` command of the README's shell blocks, continuation lines joined."""
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0]
            for part in re.split(r"&&|;|\|", line):
                words = shlex.split(part.replace("$", "_"))
                if "refinery" in words:
                    at = words.index("refinery")
                    if at + 1 < len(words) and not words[at + 1].startswith("-"):
                        commands.append(words[at + 1 :])
    return commands


def test_every_readme_command_exists_with_the_flags_it_shows():
    from refinery.cli import build_parser

    commands = _command_lines(README.read_text())
    assert len(commands) >= 8
    top = _subparsers(build_parser())
    for words in commands:
        name, rest = words[0], words[1:]
        if name in PENDING_COMMANDS:
            continue
        assert name in top, words
        parser = top[name]
        if rest and rest[0] in _subparsers(parser):  # train simgan
            parser = _subparsers(parser)[rest[0]]
        known = parser._option_string_actions
        for i, word in enumerate(rest):
            if not word.startswith("--"):
                continue
            value = rest[i + 1] if i + 1 < len(rest) else None
            if word in PENDING_FLAGS or (word, value) in PENDING_VALUES:
                continue
            assert word in known, (name, word)
            choices = known[word].choices
            if choices is not None and value is not None:
                assert value in choices, (name, word, value)

"""The READMEs describe the tree as it is: every package in the architecture table, every
`jbc` command and option in the CLI table and in `jbc --help`, every benchmark and bench
module in the bench's README. A new command, package or benchmark without its line fails here.
"""

from __future__ import annotations

import argparse
import pathlib
import re

import pytest

from appliance.cli.main import build_parser

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BENCH_README = (ROOT / "hw-testbench" / "README.md").read_text()

# Options every command takes, described once in the prose above the table.
EVERYWHERE = {"--json", "--help"}


def section(text: str, heading: str) -> str:
    """The text under a markdown heading, up to the next heading of the same or higher level."""
    match = re.search(rf"^(#+) {re.escape(heading)}\s*$", text, re.MULTILINE)
    assert match, f"no '{heading}' section"
    level = len(match.group(1))
    rest = text[match.end():]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.MULTILINE)
    return rest[:end.start()] if end else rest


def first_cells(text: str) -> list[str]:
    return [line.split("|")[1] for line in text.splitlines()
            if line.startswith("|") and not line.startswith("|---")]


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command words, its options) for every command and sub-command of the parser; each
    option is the tuple of its spellings (``-o``, ``--output``)."""
    options, children = [], None
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            children = action
        elif action.option_strings and not EVERYWHERE & set(action.option_strings):
            options.append(tuple(action.option_strings))
    yield path, options
    if children is not None:
        for name, child in children.choices.items():
            yield from commands(child, (*path, name))


def is_subsequence(words: tuple[str, ...], of: list[str]) -> bool:
    remaining = iter(of)
    return all(word in remaining for word in words)


CLI_USAGES = re.findall(r"`(jbc [^`]*)`", " ".join(first_cells(section(README, "The `jbc` CLI"))))
COMMANDS = [(path, options) for path, options in commands(build_parser()) if path]


@pytest.mark.parametrize("path,options", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_jbc_command_and_option_is_in_the_readme_table(path, options):
    usages = [re.findall(r"[\w-]+", usage)[1:] for usage in CLI_USAGES]
    words = {word for usage in usages if is_subsequence(path, usage) for word in usage}
    assert words, f"README's jbc table shows no usage of 'jbc {' '.join(path)}'"
    missing = [option[-1] for option in options if not words & set(option)]
    assert not missing, f"README's jbc table lacks {missing} of 'jbc {' '.join(path)}'"


def undescribed(parser: argparse.ArgumentParser, path: str = "jbc") -> list[str]:
    """Commands without a line in their parent's --help or a description of their own, and
    options without help, at any depth."""
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            described = {choice.dest for choice in action._choices_actions if choice.help}
            for name, child in action.choices.items():
                if name not in described or not child.description:
                    missing.append(f"{path} {name}")
                missing += undescribed(child, f"{path} {name}")
        elif action.option_strings and not action.help:
            missing.append(f"{path} {action.option_strings[-1]}")
    return missing


def test_jbc_help_describes_every_command():
    parser = build_parser()
    assert undescribed(parser) == []
    global_options = {o for a in parser._actions for o in a.option_strings if o.startswith("--")}
    prose = section(README, "The `jbc` CLI")
    assert [o for o in sorted(global_options - EVERYWHERE) if o not in prose] == []


def test_the_architecture_table_names_every_package_and_only_paths_that_exist():
    table = section(README, "Architecture in brief")
    named = set(re.findall(r"`((?:appliance|drivers|hw-testbench|systemd|image)/[\w./-]*)`",
                           table))
    for path in sorted(named):
        assert (ROOT / path).exists(), f"README's architecture table names {path}: no such path"
    packages = {f"{top}/{p.name}/" for top in ("appliance", "drivers")
                for p in (ROOT / top).iterdir()
                if p.is_dir() and any(p.glob("*.py"))}
    assert sorted(packages - named) == []


def test_every_benchmark_is_in_both_readmes():
    scripts = sorted(p.name for p in (ROOT / "hw-testbench").glob("*.py")
                     if p.name.startswith(("bench_", "interop_")))
    bench_table = section(BENCH_README, "Benchmarks")
    assert [s for s in scripts if s not in bench_table] == []
    assert [s for s in scripts if s not in section(README, "Benchmarks")] == []


def test_every_bench_module_is_in_the_bench_package_table():
    package = ROOT / "hw-testbench" / "jbcbench"
    modules = sorted(p.stem if p.is_file() else p.name + "/" for p in package.iterdir()
                     if (p.suffix == ".py" and p.stem != "__init__")
                     or (p.is_dir() and (p / "__init__.py").exists()))
    table = section(BENCH_README, "The package")
    assert [m for m in modules if f"`{m}" not in table] == []


def test_every_unit_file_is_named_in_the_readme():
    units = sorted(p.name for p in (ROOT / "systemd").iterdir() if p.is_file())
    table = section(README, "Architecture in brief")
    stems = {name: name.rsplit(".", 1)[0] for name in units}
    assert [n for n in units if n not in README and f"`{stems[n]}" not in table] == []

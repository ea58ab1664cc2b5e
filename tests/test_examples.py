"""The examples and the README run: every `examples/*.py` script, and every README command block
marked `<!-- ci: run -->`, each checked for what it should print.

Scripts run as subprocesses in their default (offline) mode. README commands run from a copy of
`examples/` with the offline stand-in model (`examples/_offline.py`) behind every model string,
so `longweave ask` answers in a second instead of loading the bundled model. The README's
command-line reference is checked against the CLI itself, both ways.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
EXAMPLES = ROOT / "examples"
README = ROOT / "README.md"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))
LIMIT_S = 900  # a safety net for a hung child on a loaded machine, not a speed check

EXPECTED: dict[str, list[str]] = {
    "library_usage.py": [
        "[chain-of-agents] worker:",  # the progress sink saw the strategy's steps
        "A: The first keeper of the lighthouse was Mara Quill",
        "cited chars 0-",
        "3 calls",  # two chunks at the stand-in's window, then the manager
    ],
    "session_usage.py": [
        "A: The first keeper of the lighthouse was Mara Quill",
        "(asked as: And who took over from Mara Quill?)",  # the follow-up was rewritten
        "her nephew Tobias Quill took over the light",
        "A: The lamp was first lit on the third of March 1889.",
        "Conversation: 3 turns",
        "Transcript starts: # Conversation about harbour_report.md",
    ],
    "batch_folder.py": [
        "4 questions over 2 documents",
        "The last miller was Jacob Rowe",
        "The first teacher of the school was Agnes Penrose",
        "(gold: Jacob Rowe)",
        "first run: 4 answered, 0 failed",
        "second run: 4 skipped (already answered), 0 asked again",
        "answers.jsonl: 4 records",
    ],
    "conversation_file.py": [
        "festival_chat.jsonl: 20 turns",
        "[light] A: Ana: I checked with the council and the festival now moves to Saturday the "
        "20th of June.",
        "[truncate] A: Ana: I checked with the council",
        "[light] A: Ben: I will collect the lanterns",
        "three hundred and fifty pounds left",
    ],
}

LAUNCHER = """
import sys
sys.path.insert(0, sys.argv.pop(1))
import longweave.llm
from _offline import offline_model
longweave.llm.resolve_model = lambda spec, **_: offline_model(8192)  # the bundled window
from longweave.cli import main
sys.argv[0] = "longweave"
main()
"""


def child_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        LONGWEAVE_CACHE_DIR=str(tmp_path / "cache"),
        HF_HUB_OFFLINE="1",
        COLUMNS="200",  # rich wraps at the terminal width; wide lines keep expected text whole
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    return env


def run(argv: list[str], cwd: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=child_env(tmp_path), capture_output=True,
                          text=True, timeout=LIMIT_S)


# -- examples/*.py -------------------------------------------------------------------------------


def test_every_script_is_checked_and_listed_in_the_readme() -> None:
    assert SCRIPTS, "examples/ holds no scripts"
    assert set(SCRIPTS) == set(EXPECTED), "add the new script's expected output to EXPECTED"
    readme = README.read_text(encoding="utf-8")
    listing = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    for name in SCRIPTS:
        assert f"examples/{name}" in readme, f"README.md does not mention examples/{name}"
        assert f"`{name}`" in listing, f"examples/README.md does not list {name}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_script_runs_offline(script: str, tmp_path: Path) -> None:
    # Run from elsewhere: a script must find its data beside itself, not in the cwd.
    done = run([sys.executable, str(EXAMPLES / script)], tmp_path, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    for text in EXPECTED[script]:
        assert text in done.stdout, f"{script}: {text!r} missing from:\n{done.stdout}"


# -- README command blocks -----------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """A fenced bash block the README marks `<!-- ci: run expect="..." -->`."""

    line: int
    commands: tuple[str, ...]
    expect: tuple[str, ...]


_BLOCK = re.compile(r"<!-- ci: run(?P<attrs>[^>]*)-->\s*\n```bash\n(?P<body>.*?)```", re.DOTALL)


def readme_blocks(text: str) -> list[Block]:
    """The marked blocks, each command with its continuation lines joined."""
    blocks = []
    for match in _BLOCK.finditer(text):
        body = match.group("body").replace("\\\n", " ")
        commands = tuple(c.strip() for c in body.splitlines() if c.strip())
        expect = tuple(re.findall(r'expect="([^"]*)"', match.group("attrs")))
        blocks.append(Block(text.count("\n", 0, match.start()) + 1, commands, expect))
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def test_readme_marks_the_promised_commands() -> None:
    commands = [shlex.split(c, comments=True) for b in BLOCKS for c in b.commands]
    assert ["longweave", "strategies"] in commands
    assert ["longweave", "--help"] in commands
    assert any(c[:2] == ["longweave", "ask"] and "examples/harbour_report.md" in c
               for c in commands)
    assert all(b.expect for b in BLOCKS), "every marked block says what it must print"


def test_block_parser_joins_continuations_and_reads_expectations() -> None:
    text = ('<!-- ci: run expect="A" expect="B c" -->\n```bash\nlongweave ask x \\\n'
            '    "q?"   # note\nlongweave strategies\n```\n\n```bash\nmake demo\n```\n')
    [block] = readme_blocks(text)
    assert block.expect == ("A", "B c")
    assert [shlex.split(c, comments=True) for c in block.commands] == [
        ["longweave", "ask", "x", "q?"], ["longweave", "strategies"]]


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"README.md:{b.line}")
def test_readme_block_runs(block: Block, tmp_path: Path) -> None:
    work = tmp_path / "work"
    shutil.copytree(EXAMPLES, work / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    output = []
    for command in block.commands:
        argv = shlex.split(command, comments=True)
        if argv[0] == "longweave":
            argv = [sys.executable, "-c", LAUNCHER, str(work / "examples"), *argv[1:]]
        elif argv[0] == "python":
            argv = [sys.executable, *argv[1:]]
        else:
            pytest.fail(f"README.md:{block.line}: only longweave and python commands can run")
        done = run(argv, work, tmp_path)
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        output.append(done.stdout + done.stderr)
    everything = "\n".join(output)
    for text in block.expect:
        assert text in everything, f"README.md:{block.line}: {text!r} missing from:\n{everything}"


# -- the command-line reference ------------------------------------------------------------------


def cli_options() -> dict[str, set[str]]:
    """Every command's option names (short and long), from the CLI's own definitions."""
    import typer

    from longweave.cli import app

    group = typer.main.get_command(app)
    return {
        name: {o for p in command.params if p.param_type_name == "option" for o in p.opts}
        - {"--help"}
        for name, command in group.commands.items()
    }


def readme_reference(text: str) -> dict[str, set[str]]:
    """The options each `### longweave CMD` heading of the reference section documents."""
    section = text.split("## Command line reference", 1)[1].split("\n## ", 1)[0]
    found: dict[str, set[str]] = {}
    for part in re.split(r"^### ", section, flags=re.MULTILINE)[1:]:
        name = re.match(r"`longweave ([\w-]+)", part)
        assert name, f"reference heading without a command: {part.splitlines()[0]!r}"
        rows = [line.split("|")[1] for line in part.splitlines() if line.startswith("| `")]
        found[name.group(1)] = {o for row in rows for o in re.findall(r"`(-[-\w]+)`", row)}
    return found


def readme_commands(text: str) -> list[list[str]]:
    """Every `longweave ...` line of every bash block (marked or not), as argv after `longweave`."""
    found = []
    for body in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for line in body.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):  # VAR=value prefixes
                argv.pop(0)
            if argv and argv[0] == "longweave":
                found.append(argv[1:])
    return found


def test_every_readme_command_uses_real_options_and_settings() -> None:
    from longweave.agents.base import strategy_class

    options = cli_options()
    commands = readme_commands(README.read_text(encoding="utf-8"))
    assert len(commands) >= 20
    for argv in commands:
        if argv == ["--help"]:
            continue
        name, rest = argv[0], argv[1:]
        assert name in options, f"README: no command {name!r} in {argv}"
        for token in rest:
            if token.startswith("-") and token != "-":
                flag = token.split("=", 1)[0]
                assert flag in options[name] | {"--help"}, f"README: longweave {name} {flag}?"
        if name in ("ask", "chat", "batch"):  # --set keys must be the strategy's settings
            chosen = next((rest[i + 1] for i, t in enumerate(rest[:-1])
                           if t in ("-s", "--strategy")), "chain-of-agents")
            fields = strategy_class(chosen).model_fields
            for i, token in enumerate(rest[:-1]):
                if token == "--set":
                    key = rest[i + 1].split("=", 1)[0]
                    assert key in fields, f"README: {chosen} has no setting {key!r}: {argv}"


def reference_markdown() -> str:
    """The reference section's body, generated from the CLI (paste it into README.md when the
    CLI changes: `python -c "from tests.test_examples import reference_markdown as r; print(r())"`).
    """
    import typer

    from longweave.cli import app

    out = []
    for name, command in typer.main.get_command(app).commands.items():
        args = [p for p in command.params if p.param_type_name == "argument"]
        usage = " ".join((p.name.upper() + ("..." if p.nargs == -1 else "")) if p.required
                         else f"[{p.name.upper()}]" for p in args)
        summary = (command.help or "").strip().split("\n\n")[0].replace("\n", " ")
        out += [f"### `{' '.join(['longweave', name, usage]).strip()}`", "", summary, "",
                "| option | default | what it does |", "|---|---|---|"]
        for p in command.params:
            if p.param_type_name != "option" or p.name == "help":
                continue
            names = ", ".join(f"`{o}`" for o in sorted(p.opts, key=len))
            empty = p.is_flag or p.default in (None, [], ()) or callable(p.default)
            default = "required" if p.required else "" if empty else f"`{p.default}`"
            text = " ".join((p.help or "").split()).replace("|", "\\|")
            out.append(f"| {names} | {default} | {text} |")
        out.append("")
    return "\n".join(out)


def test_readme_reference_matches_the_cli() -> None:
    documented = readme_reference(README.read_text(encoding="utf-8"))
    actual = cli_options()
    hint = f"regenerate the reference section:\n{reference_markdown()}"
    assert set(documented) == set(actual), f"one heading per command; {hint}"
    for name, options in actual.items():
        assert documented[name] == options, (
            f"longweave {name}: undocumented {sorted(options - documented[name])}, "
            f"no longer exist {sorted(documented[name] - options)}; {hint}"
        )

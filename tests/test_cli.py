"""The `labkit` command: its list, its errors, its lazy imports, and real subcommands end to end."""

import ast
import importlib.util
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from labkit import cli
from labkit.data.paint import render_to_file
from labkit.fileio import REPO_ROOT



def labkit(*args, timeout=120):
    """``python -m labkit ARGS`` in a fresh interpreter with this checkout first on the path."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-m", "labkit", *map(str, args)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args", [[], ["--help"]])
def test_the_command_lists_every_subcommand_with_its_summary(args):
    done = labkit(*args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: labkit <command> [args]")
    for name, command in cli.COMMANDS.items():
        assert f"  {name.ljust(max(map(len, cli.COMMANDS)))}  {command.summary}\n" in done.stdout


def test_an_unknown_command_fails_with_the_list():
    done = labkit("valdate")
    assert done.returncode == 2 and done.stdout == ""
    assert "unknown command 'valdate'" in done.stderr and "Did you mean `labkit validate`?" in done.stderr
    assert all(f"  {name} " in done.stderr for name in cli.COMMANDS)


def test_listing_the_commands_imports_no_heavy_library():
    probe = ("import runpy, sys\n"
             "sys.argv = ['labkit', '--help']\n"
             "try:\n"
             "    runpy.run_module('labkit', run_name='__main__')\n"
             "except SystemExit as done:\n"
             "    assert done.code == 0, done.code\n"
             "print(sorted({'torch', 'transformers', 'xtuner', 'PIL'} & set(sys.modules)))\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_entry_names_a_main_that_takes_argv(name):
    # A stale entry (the module moved, the line in COMMANDS did not) fails here, naming that line.
    module_name, function_name = cli.COMMANDS[name].target.split(":")
    spec = importlib.util.find_spec(module_name)
    assert spec is not None, f"labkit {name}: no module {module_name}; update labkit/cli.py COMMANDS"
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert function_name in functions, f"labkit {name}: {module_name} has no {function_name}()"
    assert [arg.arg for arg in functions[function_name].args.args] == ["argv"]


@pytest.mark.parametrize("name", ["run", "data", "validate", "foodieqa", "base-model", "serve", "demo"])
def test_a_subcommands_help_names_the_subcommand(name):
    done = labkit(name, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: labkit {name} ")


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_subcommand_answers_help(name, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([name, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("usage: ")


def test_a_subcommands_exit_code_comes_back(tmp_path):
    good = labkit("data", "sheet", tmp_path / "dishes.png")
    assert good.returncode == 0, good.stderr
    assert good.stdout.strip() == f"wrote {tmp_path / 'dishes.png'}"
    assert (tmp_path / "dishes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = labkit("data", "paint")
    assert bad.returncode == 2 and "usage: labkit data" in bad.stderr and "invalid choice: 'paint'" in bad.stderr


def test_validate_runs_end_to_end(tmp_path):
    render_to_file("肠粉", 0, tmp_path / "images" / "a.jpg")
    record = {"image": "a.jpg", "conversations": [{"from": "human", "value": "<image>\n图中的菜是什么？"},
                                                  {"from": "gpt", "value": "图中的菜是肠粉。"}]}
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps([record], ensure_ascii=False), encoding="utf-8")
    bad.write_text(json.dumps([dict(record, image="gone.jpg")], ensure_ascii=False), encoding="utf-8")
    ok = labkit("validate", good, "--image-folder", tmp_path / "images")
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stdout + ok.stderr
    wrong = labkit("validate", bad, "--image-folder", tmp_path / "images")
    assert wrong.returncode == 1 and "gone.jpg" in wrong.stdout and "image file not found" in wrong.stdout


def test_the_console_script_is_declared_and_packaged(tmp_path):
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["scripts"] == {"labkit": "labkit.cli:main"}
    # The metadata pip installs from (what `./lab setup` gets with `pip install -e .`), built here.
    probe = ("import sys\nfrom setuptools import build_meta\n"
             "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))\n")
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    entry_points = (tmp_path / done.stdout.splitlines()[-1] / "entry_points.txt").read_text(encoding="utf-8")
    assert "[console_scripts]\nlabkit = labkit.cli:main\n" in entry_points

"""The environment the tests run in is the one the pins describe, and every way in agrees.

Versions are pinned in exactly one place, requirements/base.txt (+ nodeps.txt for xtuner).
environment.yml must mirror them for conda users, the interpreter running these tests must
actually have them, and CI must go through ./lab like a student does.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import tomllib
from importlib import metadata

import pytest
import yaml
from packaging.utils import canonicalize_name
from packaging.version import Version

from labkit.fileio import REPO_ROOT

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


def read_pins(lines) -> dict[str, str]:
    """``name==version`` lines -> {canonical name: version}; comments and blanks skipped."""
    pins = {}
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = PIN.match(line)
        assert match, f"not an exact pin (name==version): {raw!r}"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"{name} is pinned twice"
        pins[name] = match.group(2)
    return pins


def base_pins() -> dict[str, str]:
    return read_pins((REPO_ROOT / "requirements/base.txt").read_text(encoding="utf-8").splitlines())


def nodeps_pins() -> dict[str, str]:
    return read_pins((REPO_ROOT / "requirements/nodeps.txt").read_text(encoding="utf-8").splitlines())


def test_environment_yml_mirrors_base_txt_exactly():
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text(encoding="utf-8"))
    deps = env["dependencies"]
    assert "python=3.11" in deps and "pip" in deps
    pip_lists = [d["pip"] for d in deps if isinstance(d, dict) and "pip" in d]
    assert len(pip_lists) == 1, "environment.yml needs exactly one pip: section"
    assert list(read_pins(pip_lists[0]).items()) == list(base_pins().items())


def test_environment_yml_tells_how_to_install_the_nodeps_pins():
    text = (REPO_ROOT / "environment.yml").read_text(encoding="utf-8")
    for name, version in nodeps_pins().items():
        assert re.search(rf"pip install --no-deps {re.escape(name)}=={re.escape(version)}", text), (
            f"environment.yml must tell conda users to run: pip install --no-deps {name}=={version}"
        )
    assert not set(nodeps_pins()) & set(base_pins()), "a package is pinned in both files"


def test_pyproject_reads_its_dependencies_from_base_txt():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    dynamic = project["tool"]["setuptools"]["dynamic"]["dependencies"]
    assert dynamic == {"file": ["requirements/base.txt"]}
    assert project["project"]["requires-python"] == ">=3.11,<3.12"
    assert {"slow", "browser", "gpu"} <= {
        marker.split(":")[0] for marker in project["tool"]["pytest"]["ini_options"]["markers"]
    }


@pytest.mark.parametrize("package", ["torch", "transformers", "mmengine", "xtuner", "peft"])
def test_running_interpreter_has_the_pinned_version(package):
    pins = {**base_pins(), **nodeps_pins()}
    installed = Version(metadata.version(package)).public  # "2.14.1+cu130" -> "2.14.1"
    assert installed == pins[canonicalize_name(package)], (
        f"{package} {installed} is installed but {pins[canonicalize_name(package)]} is pinned: "
        "run the tests through ./lab test, which keeps .venv in step with the pins."
    )


def test_running_interpreter_is_python_311():
    assert sys.version_info[:2] == (3, 11)


def test_xtuner_internvl_dataset_imports_with_the_pinned_set():
    # xtuner is installed --no-deps, so nothing guarantees its imports are met but base.txt:
    # its dataset package needs scikit-image, for one.
    module = importlib.import_module("xtuner.dataset.internvl_dataset")
    assert hasattr(module, "dynamic_preprocess")


def test_importing_labkit_stays_light():
    done = subprocess.run(
        [sys.executable, "-c", "import sys, labkit; print(sorted({'torch', 'transformers', 'xtuner'} & set(sys.modules)))"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True,
    )
    assert done.stdout.strip() == "[]"


def test_ci_goes_through_lab():
    script = (REPO_ROOT / ".ci/run").read_text(encoding="utf-8")
    assert script.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in script
    assert re.search(r"^exec \./lab test\b", script, re.MULTILINE)


def test_lab_installs_both_requirement_files():
    script = (REPO_ROOT / "lab").read_text(encoding="utf-8")
    assert "install -q -r requirements/base.txt" in script
    assert "install -q --no-deps -r requirements/nodeps.txt" in script
    assert "uv " not in script


def test_lab_rejects_an_unknown_command():
    done = subprocess.run(["bash", str(REPO_ROOT / "lab"), "frobnicate"], capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "Unknown command 'frobnicate'" in done.stderr and "./lab run" in done.stdout

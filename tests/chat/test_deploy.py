"""`labkit deploy` on a machine without a GPU: its command lines, its errors, its environment set-up,
and the notebooks' `chat_server` path against a real `labkit serve` (the same OpenAI client that
reaches LMDeploy on a GPU; that side ran on an H200, docs/benchmarks.md).
"""
from __future__ import annotations

import json
import shutil
import sys

import pytest

from helpers import noise_image, serve
from labkit.chat import ChatInputError, Sampling, TransformersEngine, make_engine
from labkit.chat import deploy
from labkit.chat.deploy import Deployment, DeployError, LMDeployEnv
from labkit.chat.prompt import lmdeploy_chat_template


@pytest.fixture
def two_folders(base_model_dir, tmp_path):
    tuned = shutil.copytree(base_model_dir, tmp_path / "tuned-model")
    return base_model_dir, tuned


def options_of(line):
    """{--option: value, or True for a flag} of one command line (split)."""
    options = {}
    for i, word in enumerate(line):
        if word.startswith("--"):
            value = line[i + 1] if i + 1 < len(line) and not line[i + 1].startswith("--") else True
            options[word] = value
    return options


def lines_of(capsys, argv):
    code = deploy.main(argv)
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_dry_run_serves_one_folder_on_localhost_with_its_own_template(base_model_dir, tmp_path, capsys):
    code, lines, _ = lines_of(capsys, [str(base_model_dir), "--dry-run", "--env", str(tmp_path / "env"),
                                       "--port", "24000"])
    assert code == 0
    assert lines[0].endswith(f"-m venv {tmp_path / 'env'}")
    assert lines[1].endswith("-m pip install -r " + str(deploy.REQUIREMENTS))
    serve_line = lines[2].split()
    assert serve_line[:4] == [str(tmp_path / "env" / "bin" / "lmdeploy"), "serve", "api_server",
                              str(base_model_dir.resolve())]
    options = options_of(serve_line)
    assert options["--server-name"] == "127.0.0.1" and options["--server-port"] == "24000"
    assert options["--model-name"] == base_model_dir.resolve().name
    assert options["--chat-template"] == str(tmp_path / "env" / "labkit-deploy" / f"{base_model_dir.name}.chat-template.json")
    assert "--trust-remote-code" in serve_line and "--eager-mode" in serve_line  # the tiny model: no CUDA graphs
    assert "--proxy-url" not in serve_line and len(lines) == 3
    assert not (tmp_path / "env").exists(), "a dry run writes nothing"


def test_two_folders_get_one_address_through_the_proxy(two_folders, tmp_path, capsys):
    base, tuned = two_folders
    code, lines, _ = lines_of(capsys, [str(base), str(tuned), "--dry-run", "--env", str(tmp_path / "env")])
    assert code == 0
    proxy, *servers = [line.split() for line in lines if " serve " in line]
    assert proxy[1:] == ["serve", "proxy", "--server-name", "127.0.0.1", "--server-port", "23333"]
    for port, folder, line in zip((23334, 23335), two_folders, servers):
        options = options_of(line)
        assert options["--server-port"] == str(port) and options["--server-name"] == "127.0.0.1"
        assert options["--model-name"] == folder.resolve().name
        assert options["--proxy-url"] == "http://127.0.0.1:23333"
        assert options["--cache-max-entry-count"] == "0.40"  # the two KV caches share the GPU


def test_the_template_file_is_the_one_the_folder_was_trained_with(two_folders, tmp_path):
    from labkit.checkpoints.remote_code import FolderTemplates
    from labkit.fileio import read_config

    deployment = Deployment(two_folders, LMDeployEnv(tmp_path / "env"))
    deployment.write_templates()
    for folder in two_folders:
        written = json.loads(deployment.template_file(folder.resolve()).read_text(encoding="utf-8"))
        template = read_config(folder)["template"]
        assert written == lmdeploy_chat_template(template, None, FolderTemplates(folder))
        assert written["user"] == "<|im_start|>user\n" and written["stop_words"] == ["<|im_end|>"]


@pytest.mark.skipif(deploy.cuda_available(), reason="this machine has a CUDA GPU")
def test_no_gpu_is_named_and_nothing_is_installed(base_model_dir, tmp_path, capsys):
    code, _, err = lines_of(capsys, [str(base_model_dir), "--env", str(tmp_path / "env")])
    assert code == 2
    assert "no CUDA GPU" in err and "labkit serve MODEL_DIR" in err and "chat_server" in err
    assert not (tmp_path / "env").exists()


@pytest.mark.parametrize("case", ["missing", "twins", "port", "backend"])
def test_bad_arguments_are_named_before_anything_runs(case, base_model_dir, tmp_path, capsys):
    argv = {
        "missing": [str(tmp_path / "no-such-model")],
        "twins": [str(base_model_dir), str(shutil.copytree(base_model_dir, tmp_path / "x" / base_model_dir.name))],
        "port": [str(base_model_dir), "--port", "70000"],
        "backend": [str(base_model_dir), "--backend", "vllm"],
    }[case]
    if case == "backend":
        with pytest.raises(SystemExit):
            deploy.main(argv + ["--dry-run"])
        assert "invalid choice: 'vllm'" in capsys.readouterr().err
        return
    code, _, err = lines_of(capsys, argv + ["--dry-run", "--env", str(tmp_path / "env")])
    assert code == 2
    expected = {"missing": str(tmp_path / "no-such-model"), "twins": "both named",
                "port": "--port 70000"}[case]
    assert expected in err


def test_a_port_in_use_is_named_before_anything_starts(two_folders, tmp_path):
    import socket

    deployment = Deployment(two_folders, LMDeployEnv(tmp_path / "env"), port=30000)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        deployment.port = holder.getsockname()[1] - 1  # the proxy's port is free, the first server's is taken
        with pytest.raises(DeployError, match=f"port {deployment.port + 1} on 127.0.0.1 is in use"):
            deployment.check_ports_free()
    assert deployment.processes == []


def _venv(tmp_path, requirements_text="# nothing to install\n"):
    requirements = tmp_path / "lmdeploy.txt"
    requirements.write_text(requirements_text)
    return LMDeployEnv(tmp_path / "env", requirements=requirements, python=sys.executable)


def test_environment_is_made_once_from_the_requirements_and_a_missing_lmdeploy_is_named(tmp_path):
    env = _venv(tmp_path)
    assert [command[1:3] for command in env.setup_commands()] == [["-m", "venv"], ["-m", "pip"]]
    with pytest.raises(DeployError, match="LMDeploy does not import in .*env"):
        env.ensure(say=lambda line: None)
    assert (env.path / deploy.STAMP).read_text().strip() == env.requirements_hash()
    assert [command[1:3] for command in env.setup_commands()] == [["-m", "pip"]], "the venv is kept"


def _fake_lmdeploy(env, transformers_version):
    """A stand-in ``lmdeploy`` and ``transformers`` (version strings only): LMDeploy itself needs a GPU."""
    site = next((env.path / "lib").glob("python*/site-packages"))
    for name, version in (("lmdeploy", "0.18.0"), ("transformers", transformers_version)):
        (site / name).mkdir()
        (site / name / "__init__.py").write_text(f"__version__ = {version!r}\n")


def test_an_environment_made_by_hand_is_used_as_it_is_unless_its_transformers_misreads_the_folders(tmp_path):
    env = _venv(tmp_path)
    with pytest.raises(DeployError):
        env.ensure(say=lambda line: None)
    (env.path / deploy.STAMP).unlink()  # as if set up by hand
    _fake_lmdeploy(env, "5.17.0")
    assert env.setup_commands() == []
    assert env.ensure(say=lambda line: None) == "0.18.0"
    (env.path.glob("lib/python*/site-packages/transformers/__init__.py").__next__()).write_text("__version__ = '4.57.6'\n")
    with pytest.raises(DeployError, match="transformers 4.57.6; LMDeploy 0.18 misreads"):
        env.ensure(say=lambda line: None)


def test_changed_requirements_are_installed_again(tmp_path):
    env = _venv(tmp_path)
    with pytest.raises(DeployError):
        env.ensure(say=lambda line: None)
    _fake_lmdeploy(env, "5.17.0")
    assert env.setup_commands() == []
    env.requirements.write_text("# nothing to install, again\n")
    assert [command[1:3] for command in env.setup_commands()] == [["-m", "pip"]]


def test_lmdeploy_processes_do_not_inherit_the_course_pythonpath(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/somewhere/course-site")
    assert "PYTHONPATH" not in deploy.child_environment()


# -- the client side: chat_server in notebooks 02 and 05 ------------------------------------------
@pytest.fixture(scope="module")
def served_base(base_model_dir):
    with serve(base_model_dir) as url:
        yield url


def test_chat_server_gives_the_served_models_answers(served_base, base_model_dir):
    engine = make_engine(base_model_dir, server=served_base)
    local = TransformersEngine(base_model_dir)
    picture, short = noise_image(64, 64, seed=3), Sampling(max_new_tokens=12)
    assert engine.backend == "openai" and "chat_server=" in engine.picked
    assert engine.ask("图中的菜是什么？", image=picture, settings=short) == local.ask("图中的菜是什么？", image=picture,
                                                                                   settings=short)
    assert engine.tiling == local.tiling  # from the folder: notebook 02's exercise reads it
    assert engine.prompt("图中的菜是什么？", image=picture, full=True) == local.prompt("图中的菜是什么？", image=picture,
                                                                                   full=True)


def test_chat_server_without_that_folders_model_is_named(served_base, tmp_path, base_model_dir):
    other = shutil.copytree(base_model_dir, tmp_path / "tuned-model")
    with pytest.raises(ChatInputError, match="serves '.*', not 'tuned-model'.*labkit deploy"):
        make_engine(other, server=served_base)
    with pytest.raises(ConnectionError, match="labkit deploy MODEL_DIR"):
        make_engine(base_model_dir, server="http://127.0.0.1:9/v1")


def test_evaluate_through_chat_server_equals_the_local_evaluation(served_base, base_model_dir, food_one):
    from labkit.eval.evaluate import evaluate

    annotation, images = food_one["food"]["train"], food_one["image_folder"]
    served = evaluate(base_model_dir, annotation, images, max_new_tokens=12, limit=6, server=served_base)
    local = evaluate(base_model_dir, annotation, images, max_new_tokens=12, limit=6)
    assert [a.answer for a in served.answers] == [a.answer for a in local.answers]


def test_compare_cell_through_chat_server(served_base, base_model_dir):
    from labkit.chat.compare import compare_cell

    cell = compare_cell(base_model_dir, base_model_dir, server=served_base)
    assert {engine.backend for engine in cell.engines.values()} == {"openai"}


@pytest.mark.slow
def test_notebook_02_with_chat_server_answers_through_the_server(served_base, base_model_dir, tmp_path):
    """The notebook itself, by papermill, with its one parameter set: the same answers as loading the model."""
    from helpers import shared_cache
    from labkit.course.main import run_course

    runs = {}
    for label, server in (("served", served_base), ("local", "")):
        run_dir = tmp_path / label
        run_course(run_dir, shared_cache(), notebooks=["02_baseline_chat.ipynb"], progress=False,
                   parameters={"chat_server": server, "model_dir": str(base_model_dir)})
        runs[label] = json.loads((run_dir / "baseline.json").read_text(encoding="utf-8"))
    assert runs["served"]["engine"].startswith("openai client of " + served_base)
    assert [a["answer"] for a in runs["served"]["answers"]] == [a["answer"] for a in runs["local"]["answers"]]
    assert runs["served"]["prompt"] == runs["local"]["prompt"]


# -- starting, waiting and stopping the servers ---------------------------------------------------
STAND_IN = '''#!{python}
"""A stand-in for `lmdeploy serve api_server` (LMDeploy needs a GPU): it checks the template file it
is given, then serves the folder with labkit serve under the asked-for name and port."""
import argparse, json, os, sys
parser = argparse.ArgumentParser()
parser.add_argument("serve"); parser.add_argument("kind"); parser.add_argument("folder")
parser.add_argument("--server-port"); parser.add_argument("--model-name"); parser.add_argument("--chat-template")
args, _ = parser.parse_known_args()
json.load(open(args.chat_template, encoding="utf-8"))
os.execv(sys.executable, [sys.executable, "-m", "labkit", "serve", args.folder, "--port", args.server_port,
                          "--model-name", args.model_name, "--quiet"])
'''


def _stand_in(env_dir, text):
    script = env_dir / "bin" / "lmdeploy"
    script.parent.mkdir(parents=True)
    script.write_text(text.format(python=sys.executable))
    script.chmod(0o755)


def _free_port():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_started_deployment_answers_under_the_folders_name_and_stops(base_model_dir, tmp_path):
    _stand_in(tmp_path / "env", STAND_IN)
    deployment = Deployment([base_model_dir], LMDeployEnv(tmp_path / "env"), port=_free_port())
    said = []
    try:
        deployment.start(say=said.append)
        deployment.wait_ready(timeout=180, say=said.append)
        assert deployment.served() == [base_model_dir.resolve().name]
        assert f"chat_server = {deployment.url!r}" in said[-1]
        engine = make_engine(base_model_dir, server=deployment.url)
        short = Sampling(max_new_tokens=8)
        assert engine.ask("你好", settings=short) == TransformersEngine(base_model_dir).ask("你好", settings=short)
        processes = [process for _, process in deployment.processes]
    finally:
        deployment.stop()
    assert all(process.poll() is not None for process in processes) and deployment.processes == []
    assert deployment.served() == []


def test_a_server_that_dies_is_named_with_the_end_of_its_log(base_model_dir, tmp_path):
    _stand_in(tmp_path / "env", "#!/bin/sh\necho 'CUDA out of memory while loading'\nexit 3\n")
    deployment = Deployment([base_model_dir], LMDeployEnv(tmp_path / "env"), port=_free_port())
    try:
        deployment.start(say=lambda line: None)
        with pytest.raises(DeployError, match=r"(?s)stopped \(exit code 3\) before it served.*CUDA out of memory"):
            deployment.wait_ready(timeout=60, say=lambda line: None)
    finally:
        deployment.stop()

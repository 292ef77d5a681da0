"""Deploy model folders with LMDeploy on a CUDA GPU, then chat with them: the lab's deploy step.

    labkit deploy MODEL_DIR [MODEL_DIR ...] [--port 23333]

One command does the whole step:

1. It checks each folder, and that this machine has a CUDA GPU (LMDeploy runs on nothing else).
2. It sets up LMDeploy's own environment (``.venv-lmdeploy``) from ``requirements/lmdeploy.txt``,
   once: LMDeploy needs an older torch than the course kernel.
3. It writes each folder's chat template, the one its ``config.json`` names (the template it was
   trained with), as the JSON file of ``lmdeploy serve api_server --chat-template``, so LMDeploy
   prompts exactly as labkit does.
4. It starts ``lmdeploy serve api_server`` on 127.0.0.1 for each folder. With several folders it
   puts ``lmdeploy serve proxy`` in front, so one address serves them all, each under its
   folder's name. It waits until every model answers, then prints the address for the
   ``chat_server`` parameter of notebooks 02 and 05, and serves until Ctrl-C.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from labkit.chat.inputs import ChatInputError
from labkit.chat.openai_engine import OpenAIEngine, served_name
from labkit.fileio import REPO_ROOT, write_json, write_text

REQUIREMENTS = REPO_ROOT / "requirements" / "lmdeploy.txt"
DEFAULT_ENV = REPO_ROOT / ".venv-lmdeploy"
DEFAULT_PORT = 23333
STAMP = ".labkit-requirements.sha256"
VERSIONS = "import json, lmdeploy, transformers; print(json.dumps({'lmdeploy': lmdeploy.__version__, " \
           "'transformers': transformers.__version__}))"


class DeployError(RuntimeError):
    """The deployment cannot go on; the message says why and what to do."""


def needs_eager_mode(config) -> bool:
    """True for labkit's tiny models: on them the PyTorch engine's CUDA-graph warm-up stops with an
    illegal memory access (seen with LMDeploy 0.18.0 on an H200), so they are served eagerly.
    InternVL2-2B's sizes run with CUDA graphs."""
    return config.get("llm_config", {}).get("hidden_size", 4096) < 512


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


class LMDeployEnv:
    """LMDeploy's virtual environment, set up once from ``requirements/lmdeploy.txt``."""

    def __init__(self, path=DEFAULT_ENV, requirements=REQUIREMENTS, python=sys.executable):
        self.path, self.requirements, self.python = Path(path).absolute(), Path(requirements), python

    def bin(self, name) -> Path:
        return self.path / "bin" / name

    def versions(self) -> dict | None:
        """The versions of LMDeploy and transformers in this environment; None if LMDeploy does not import."""
        if not self.bin("python").exists():
            return None
        probe = subprocess.run([str(self.bin("python")), "-c", VERSIONS], capture_output=True, text=True,
                               env=child_environment())
        if probe.returncode != 0 or not probe.stdout.strip():
            return None
        return json.loads(probe.stdout.strip().splitlines()[-1])  # the last line: an import may log before it

    def lmdeploy_version(self) -> str | None:
        versions = self.versions()
        return versions["lmdeploy"] if versions else None

    def requirements_hash(self) -> str:
        if not self.requirements.is_file():
            raise DeployError(f"{self.requirements}: the LMDeploy requirements file is missing.")
        return hashlib.sha256(self.requirements.read_bytes()).hexdigest()

    def stamp(self) -> str | None:
        stamp = self.path / STAMP
        return stamp.read_text().strip() if stamp.is_file() else None

    def setup_commands(self) -> list[list[str]]:
        """The commands that (re)build the environment, or [] when it is ready."""
        version, stamp = self.lmdeploy_version(), self.stamp()
        if version and stamp in (None, self.requirements_hash()):
            return []  # installed from these requirements, or set up by hand (no stamp): used as it is
        commands = [] if self.bin("python").exists() else [[self.python, "-m", "venv", str(self.path)]]
        return commands + [[str(self.bin("python")), "-m", "pip", "install", "-r", str(self.requirements)]]

    def ensure(self, say=print) -> str:
        """Set the environment up if it is not ready; LMDeploy's version."""
        wanted = self.requirements_hash()
        for command in self.setup_commands():
            say("labkit deploy: " + " ".join(command))
            if subprocess.run(command, env=child_environment()).returncode != 0:
                raise DeployError(f"setting up {self.path} failed at `{' '.join(command)}` (its output is above). "
                                  "Fix the cause and run labkit deploy again; it picks up where it stopped.")
            if command[1:3] == ["-m", "pip"]:
                write_text(self.path / STAMP, wanted + "\n")
        versions = self.versions()
        if versions is None:
            raise DeployError(f"LMDeploy does not import in {self.path}. Remove that folder and run labkit deploy "
                              f"again, or give an environment that has it (--env).")
        if int(versions["transformers"].split(".")[0]) < 5:
            # Seen on an H200: LMDeploy 0.18.0 under transformers 4.57.6 answered every question of
            # labkit's models with a run of commas, under 5.17.0 exactly as transformers does.
            raise DeployError(f"{self.path} has transformers {versions['transformers']}; LMDeploy 0.18 misreads "
                              "InternVL2 folders under transformers 4 and answers with nonsense. Install the pins of "
                              f"{self.requirements} there (transformers 5).")
        return versions["lmdeploy"]


def child_environment() -> dict:
    """The environment of LMDeploy's processes: the course's PYTHONPATH left out, so nothing of the
    course environment leaks into LMDeploy's own."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


class Deployment:
    """The LMDeploy servers for some folders, started and stopped together."""

    def __init__(self, folders, env: LMDeployEnv, port=DEFAULT_PORT, backend="pytorch", state=None,
                 extra_args=()):
        from labkit.checkpoints.folder import check_model_folder

        self.folders = [Path(folder).resolve() for folder in folders]
        if not self.folders:
            raise DeployError("name at least one model folder to deploy.")
        self.configs = [check_model_folder(folder) for folder in self.folders]  # a bad folder is named first
        names = [served_name(folder) for folder in self.folders]
        twins = sorted({name for name in names if names.count(name) > 1})
        if twins:
            raise DeployError(f"two folders are both named {twins[0]!r}, and a model is served under its folder's "
                              "name: rename or copy one of them.")
        if not 1 <= port <= 65535 - len(self.folders):
            raise DeployError(f"--port {port}: give a port from 1 to {65535 - len(self.folders)}.")
        if backend not in ("pytorch", "turbomind"):
            raise DeployError(f"--backend {backend!r}: LMDeploy offers 'pytorch' or 'turbomind'.")
        self.env, self.port, self.backend, self.extra_args = env, port, backend, list(extra_args)
        self.state = Path(state) if state else env.path / "labkit-deploy"
        self.processes: list[tuple[str, subprocess.Popen]] = []

    @property
    def proxied(self) -> bool:
        return len(self.folders) > 1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def ports(self) -> list[int]:
        return list(range(self.port, self.port + len(self.folders) + (1 if self.proxied else 0)))

    def check_ports_free(self) -> None:
        """DeployError naming the first port on 127.0.0.1 that another program holds."""
        import socket

        for port in self.ports():
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    raise DeployError(f"port {port} on 127.0.0.1 is in use (an earlier labkit deploy or labkit serve?): "
                                      f"stop that server or choose another --port; this deployment needs ports "
                                      f"{self.ports()[0]}-{self.ports()[-1]}.") from None

    def template_file(self, folder: Path) -> Path:
        return self.state / f"{served_name(folder)}.chat-template.json"

    def commands(self) -> list[tuple[str, list[str]]]:
        """(name, command line) of each process, the proxy first."""
        lmdeploy = str(self.env.bin("lmdeploy"))
        commands = []
        if self.proxied:
            commands.append(("proxy", [lmdeploy, "serve", "proxy", "--server-name", "127.0.0.1",
                                       "--server-port", str(self.port)]))
        for i, (folder, config) in enumerate(zip(self.folders, self.configs)):
            port = self.port + i + 1 if self.proxied else self.port
            line = [lmdeploy, "serve", "api_server", str(folder), "--server-name", "127.0.0.1",
                    "--server-port", str(port), "--backend", self.backend, "--model-name", served_name(folder),
                    "--chat-template", str(self.template_file(folder)), "--trust-remote-code"]
            if self.proxied:  # each server's KV cache takes its share of the GPU (LMDeploy's default: 0.8)
                line += ["--proxy-url", f"http://127.0.0.1:{self.port}",
                         "--cache-max-entry-count", f"{0.8 / len(self.folders):.2f}"]
            if self.backend == "pytorch" and needs_eager_mode(config):
                line.append("--eager-mode")
            commands.append((served_name(folder), line + self.extra_args))
        return commands

    def write_templates(self) -> None:
        from labkit.chat.prompt import lmdeploy_chat_template
        from labkit.checkpoints.remote_code import FolderTemplates

        for folder, config in zip(self.folders, self.configs):
            templates = FolderTemplates(folder)
            fields = lmdeploy_chat_template(config.get("template"), None, templates)
            write_json(self.template_file(folder), fields, ensure_ascii=False)

    def start(self, say=print) -> None:
        self.write_templates()
        for name, command in self.commands():
            log = self.state / f"{name}.log"
            say(f"labkit deploy: starting {name} (log: {log})")
            with open(log, "wb") as out:
                self.processes.append((name, subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                                              env=child_environment(), start_new_session=True)))

    def served(self) -> list[str]:
        """The model names the address lists now ([] while it does not answer)."""
        try:
            return OpenAIEngine(self.url, timeout=5).served_models()
        except (ConnectionError, RuntimeError, ChatInputError, OSError, ValueError):
            return []

    def wait_ready(self, timeout=900.0, say=print) -> None:
        wanted = {served_name(folder) for folder in self.folders}
        deadline = time.monotonic() + timeout
        while not wanted <= set(self.served()):
            for name, process in self.processes:
                if process.poll() is not None:
                    raise DeployError(f"{name} stopped (exit code {process.returncode}) before it served; the end "
                                      f"of its log, {self.state / (name + '.log')}:\n{self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise DeployError(f"{self.url} did not list {sorted(wanted)} within {timeout:.0f} s; see the logs "
                                  f"in {self.state}.")
            time.sleep(2)
        say(f"labkit deploy: ready. In notebooks 02 and 05 set chat_server = {self.url!r} "
            f"(models: {', '.join(sorted(wanted))}).")

    def log_tail(self, name, lines=30) -> str:
        path = self.state / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        for _, process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, 15)
        for _, process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
        self.processes.clear()


@contextmanager
def deployed(folders, env=None, port=DEFAULT_PORT, backend="pytorch", timeout=900.0, say=print, extra_args=()):
    """Serve ``folders`` with LMDeploy inside a ``with`` block; yields the running :class:`Deployment`."""
    if not cuda_available():
        raise DeployError(NO_GPU)
    env = env if isinstance(env, LMDeployEnv) else LMDeployEnv(env or DEFAULT_ENV)
    deployment = Deployment(folders, env, port, backend, extra_args=extra_args)
    deployment.check_ports_free()
    say(f"labkit deploy: LMDeploy {env.ensure(say)} in {env.path}")
    try:
        deployment.start(say)
        deployment.wait_ready(timeout, say)
        yield deployment
    finally:
        deployment.stop()


NO_GPU = ("this machine has no CUDA GPU (torch.cuda.is_available() is False), and LMDeploy runs on CUDA GPUs "
          "only. Here, serve a folder with the transformers engine instead: `labkit serve MODEL_DIR --port 23333`, "
          "and set chat_server = 'http://127.0.0.1:23333/v1' in notebook 02 (or leave chat_server empty).")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="labkit deploy", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dirs", nargs="+", metavar="MODEL_DIR", help="official-format checkpoint folders")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="the address's port (more folders: the "
                        "next ports serve them behind it)")
    parser.add_argument("--backend", default="pytorch", choices=["pytorch", "turbomind"],
                        help="LMDeploy's engine")
    parser.add_argument("--env", type=Path, default=DEFAULT_ENV, help="LMDeploy's environment (set up if missing)")
    parser.add_argument("--python", default=sys.executable, help="the Python that makes a new environment")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the servers")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    env = LMDeployEnv(args.env, python=args.python)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `kill` stops the servers too, as Ctrl-C does
    try:
        deployment = Deployment(args.model_dirs, env, args.port, args.backend)
        if args.dry_run:
            for command in env.setup_commands():
                print(" ".join(command))
            for _, command in deployment.commands():
                print(" ".join(command))
            return 0
        with deployed(args.model_dirs, env, args.port, args.backend, args.timeout) as running:
            try:
                while all(process.poll() is None for _, process in running.processes):
                    time.sleep(1)
            except KeyboardInterrupt:
                return 0
            stopped = next(name for name, process in running.processes if process.poll() is not None)
            raise DeployError(f"{stopped} stopped; the end of its log:\n{running.log_tail(stopped)}")
    except KeyboardInterrupt:  # while setting up or waiting: the servers are stopped already
        return 130
    except (DeployError, ChatInputError, ValueError) as err:
        print(f"labkit deploy: error: {err}", file=sys.stderr)
        return 2

"""What the browser tests stand on: a JupyterLab server and a Chromium of their own, always stopped.

* :class:`JupyterLab` starts ``python -m jupyterlab`` on 127.0.0.1 with a random token, a free
  port and fresh config/data/runtime/IPython folders (nothing from the user's own Jupyter set-up
  leaks in), waits until ``/api/status`` answers, and :meth:`JupyterLab.stop` shuts it down with
  ``POST /api/shutdown`` - then makes sure, process by process, that the server and every
  kernel it started are gone.
* :func:`chromium` launches Debian's ``/usr/bin/chromium`` through Python playwright (a browser
  of playwright's own cannot be downloaded here) with the flags that keep it off the network,
  and stops it, and playwright's driver, on the way out.
* :func:`parameterized_notebook` copies a course notebook with its parameters injected the way
  papermill does it (a cell tagged ``injected-parameters`` after the ``parameters`` cell).
* :func:`code_notebook` writes a small notebook of the test's own code cells.
* :class:`NotebookPage` drives a notebook in the JupyterLab page: wait for a really idle kernel,
  Run All, wait until every code cell has run.

The tiny base model notebook 02 uses by default is the session fixture ``base_model_dir`` in
``tests/conftest.py``.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import psutil

from labkit.fileio import REPO_ROOT

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO_ROOT / "runs" / "test-artifacts"

# Without the networking flags Chromium stalls on look-ups that a closed network refuses.
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--disable-dev-shm-usage",
]

# JupyterLab user settings written into the fresh settings folder: no news or update prompt, and
# every cell kept rendered (JupyterLab 4 skips laying out cells out of view, so a chat cell far
# down a long notebook would never become visible to the test).
LAB_USER_SETTINGS = {
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
}


def chromium_missing_reason() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not CHROMIUM.is_file():
        return (f"{CHROMIUM} is missing: install Chromium ('./lab setup' does it with apt-get as root, "
                "or 'apt-get install chromium') to run the browser tests")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing: run ./lab setup (requirements/base.txt pins it)"
    return None


def cjk_font_missing_reason() -> str | None:
    """Why screenshots would show boxes instead of Chinese characters, or None when a font is there."""
    try:
        found = subprocess.run(["fc-list", ":lang=zh", "family"], capture_output=True, text=True,
                               timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        found = ""
    if found.strip():
        return None
    return ("no Chinese font is installed, so screenshots show boxes instead of the dish names "
            "(the answers are still checked): ./lab setup installs one, or apt-get install fonts-wqy-zenhei")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def save_artifact(source: Path, name: str | None = None) -> Path:
    """Copy a file into ``runs/test-artifacts/`` (written atomically) and return the copy's path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    target = ARTIFACTS / (name or source.name)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(Path(source).read_bytes())
    os.replace(tmp, target)
    return target


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------


def process_tree(pid: int) -> list[psutil.Process]:
    """The process ``pid`` and all its descendants (empty when it is already gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _describe(process: psutil.Process) -> str:
    try:
        return f"pid {process.pid} ({' '.join(process.cmdline())[:120]})"
    except psutil.Error:
        return f"pid {process.pid}"


def end_processes(processes, grace_s: float = 20.0) -> list[str]:
    """Wait up to ``grace_s`` for the processes to end; terminate, then kill, the ones that do not.

    Returns a description of every process that had to be ended by force (empty when all of
    them ended on their own), so a caller can report a shutdown that did not work.
    """
    processes = list(processes)
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    alive = [p for p in alive if _alive(p)]
    forced = [_describe(p) for p in alive]
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(alive, timeout=5)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=5)
    still = [_describe(p) for p in processes if _alive(p)]
    if still:
        raise RuntimeError(f"These processes survived SIGKILL: {', '.join(still)}")
    return forced


def _warn_if_forced(what: str, forced: list[str]):
    if forced:
        warnings.warn(f"{what} did not stop cleanly; ended by force: {'; '.join(forced)}")


# ---------------------------------------------------------------------------------------------
# JupyterLab
# ---------------------------------------------------------------------------------------------


class JupyterLab:
    """A JupyterLab server of the test's own on 127.0.0.1.

    ``root_dir`` is what the file browser shows; ``home`` receives the fresh Jupyter and
    IPython folders and the server's log (``jupyterlab.log``, which also holds the kernels'
    stderr). Use it as a context manager, so the server stops also when the test fails.
    """

    def __init__(self, root_dir: Path, home: Path, python: str = sys.executable, startup_timeout_s: float = 240):
        self.root_dir, self.home = Path(root_dir), Path(home)
        self.python, self.startup_timeout_s = python, startup_timeout_s
        self.token = secrets.token_hex(16)
        self.port = None
        self.process = None
        self.log_path = self.home / "jupyterlab.log"
        self.forced_stops: list[str] = []

    def url(self, path: str = "lab") -> str:
        """An address on this server, with the token (the browser keeps the login cookie after it)."""
        separator = "&" if "?" in path else "?"
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}{separator}token={self.token}"

    def _environment(self) -> dict:
        folders = {
            "JUPYTER_CONFIG_DIR": "jupyter-config", "JUPYTER_DATA_DIR": "jupyter-data",
            "JUPYTER_RUNTIME_DIR": "jupyter-runtime", "IPYTHONDIR": "ipython",
            "JUPYTERLAB_SETTINGS_DIR": "lab-user-settings", "JUPYTERLAB_WORKSPACES_DIR": "lab-workspaces",
        }
        env = dict(os.environ)
        for variable, name in folders.items():
            env[variable] = str(self.home / name)
            (self.home / name).mkdir(parents=True, exist_ok=True)
        env["JUPYTER_PLATFORM_DIRS"] = "1"
        env.pop("MPLBACKEND", None)  # a kernel should draw inline, as for a student
        # The kernel imports this checkout's labkit, whichever environment runs the tests.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        # The kernel's "python" is this interpreter (jupyter_client swaps it in), and so are its tools.
        env["PATH"] = os.pathsep.join([str(Path(self.python).parent), env.get("PATH", "")])
        return env

    def _write_user_settings(self, settings_dir: Path):
        for plugin, values in LAB_USER_SETTINGS.items():
            package, name = plugin.rsplit("/", 1)
            path = settings_dir / package / f"{name}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values), encoding="utf-8")

    def start(self):
        env = self._environment()
        self._write_user_settings(Path(env["JUPYTERLAB_SETTINGS_DIR"]))
        self.port = free_port()
        command = [
            self.python, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
            "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root_dir}",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-root")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, env=env, cwd=self.root_dir, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()
        return self

    def _wait_ready(self):
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with code {self.process.returncode} while starting:\n"
                                   f"{self.log_tail()}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                with urllib.request.urlopen(self.url("api/status"), timeout=5) as response:
                    if response.status == 200:
                        return
            time.sleep(0.5)
        raise TimeoutError(f"JupyterLab did not answer on port {self.port} within "
                           f"{self.startup_timeout_s:.0f} s:\n{self.log_tail()}")

    def api(self, path: str, method: str = "GET", timeout_s: float = 10):
        """Call the server's REST API; the parsed JSON answer (None when it has no body)."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/{path.lstrip('/')}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = response.read()
        return json.loads(body) if body else None

    def log_tail(self, chars: int = 4000) -> str:
        if not self.log_path.is_file():
            return "(no server log)"
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]

    def stop(self) -> list[str]:
        """Shut the server down (``POST /api/shutdown``) and make sure it and its kernels are gone.

        Returns the processes that had to be ended by force; they are also kept in
        ``forced_stops`` and reported as a warning.
        """
        if self.process is None:
            return []
        processes = process_tree(self.process.pid)  # kernels included: after the exit they would be orphans
        with contextlib.suppress(OSError, urllib.error.URLError):
            self.api("api/shutdown", method="POST")
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)
        self.forced_stops = end_processes(processes)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)  # reap it
        self.process = None
        _warn_if_forced("JupyterLab", self.forced_stops)
        return self.forced_stops

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()


# ---------------------------------------------------------------------------------------------
# Chromium
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def chromium(profile_dir: Path, viewport=(1280, 1000), default_timeout_s: float = 60):
    """A headless Chromium browser context (``/usr/bin/chromium`` through playwright); stopped on exit.

    Playwright runs a driver process and the browser under it; both are ended on the way
    out, by force if they linger, also when the test failed.
    """
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=default_timeout_s * 1000)  # playwright's own default is 5 s
    ours = []
    with contextlib.ExitStack() as stack:  # on the way out, last registered runs first
        stack.callback(lambda: _warn_if_forced("Chromium", end_processes(ours, grace_s=10)))
        before = {p.pid for p in psutil.Process().children()}
        playwright = stack.enter_context(sync_playwright())
        # Only the driver's tree is ours to end: a JupyterLab kernel is a child of this process too.
        drivers = [p for p in psutil.Process().children() if p.pid not in before]

        def note_our_processes():  # the driver and every browser process under it, while they are there
            ours.extend(p for driver in drivers for p in process_tree(driver.pid))

        stack.callback(note_our_processes)  # in case the launch fails half-way
        context = playwright.chromium.launch_persistent_context(
            str(profile_dir), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": viewport[0], "height": viewport[1]},
        )
        stack.callback(context.close)
        stack.callback(note_our_processes)  # before the browser closes, with the page's renderers
        context.set_default_timeout(default_timeout_s * 1000)
        yield context


# ---------------------------------------------------------------------------------------------
# Notebooks
# ---------------------------------------------------------------------------------------------


def parameterized_notebook(source: Path, target: Path, parameters: dict) -> Path:
    """Copy notebook ``source`` to ``target`` with ``parameters`` injected as papermill does.

    The copy gets a cell tagged ``injected-parameters`` right after the cell tagged
    ``parameters``, so the later value wins, exactly as in ``papermill -p NAME VALUE``.
    """
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    notebook = parameterize_notebook(load_notebook_node(str(source)), parameters)
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp")
    nbformat.write(notebook, str(tmp))
    os.replace(tmp, target)
    return target


def code_notebook(target: Path, sources: list[str]) -> Path:
    """Write a notebook of code cells (``sources``, one string per cell) for the python3 kernel."""
    import nbformat

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in sources])
    notebook.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp")
    nbformat.write(notebook, str(tmp))
    os.replace(tmp, target)
    return target


class NotebookPage:
    """One notebook open in the JupyterLab page, driven like a person would: menus and the mouse.

    The traps it avoids: the toolbar's kernel indicator reads "idle" before the kernel has
    connected, and a Run All sent then is dropped without a word. So it waits for the status
    bar to say "| Idle" and runs the notebook from the Run menu only then.
    """

    KERNEL_STATUS = ".jp-StatusBar-TextItem"

    def __init__(self, page, lab: JupyterLab, name: str):
        self.page, self.lab, self.name = page, lab, name

    def open(self, timeout_s: float = 180):
        self.page.goto(self.lab.url(f"lab/tree/{self.name}"), timeout=timeout_s * 1000)
        self.page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for(timeout=timeout_s * 1000)
        self.wait_for_idle_kernel(timeout_s)
        return self

    def kernel_status(self) -> str:
        texts = self.page.locator(self.KERNEL_STATUS).all_inner_texts()
        return next((t for t in texts if " | " in t), "")

    def wait_for_idle_kernel(self, timeout_s: float):
        """Until the status bar reads "<kernel name> | Idle" (the kernel is connected and free)."""
        self.page.locator(self.KERNEL_STATUS, has_text=re.compile(r"\|\s*Idle\s*$")).wait_for(
            timeout=timeout_s * 1000)

    def run_all(self):
        """Run > Run All Cells, from the menu bar."""
        self.page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        self.page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()

    def code_prompts(self) -> list[str]:
        return [t.strip() for t in self.page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()]

    def wait_until_all_cells_ran(self, timeout_s: float):
        """Until every code cell shows ``[n]:`` and the kernel is idle; fails on an error output."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            errors = self.page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
            tracebacks = [t for t in errors.all_inner_texts() if "Traceback" in t]
            if tracebacks:
                raise AssertionError(f"A cell of {self.name} failed:\n{tracebacks[0][-3000:]}")
            prompts = self.code_prompts()
            all_ran = prompts and all(re.fullmatch(r"\[\d+\]:", p) for p in prompts)
            if all_ran and self.kernel_status().endswith("Idle"):
                return prompts
            time.sleep(1)
        raise TimeoutError(f"{self.name} did not finish within {timeout_s:.0f} s; cell prompts: "
                           f"{self.code_prompts()}, kernel: {self.kernel_status()!r}")

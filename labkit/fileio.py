"""Atomic writes of files and folders: the one place labkit writes anything a student keeps.

Every writer in labkit goes through here, so three promises hold everywhere:

* **all or nothing**: the new content is written under a unique temporary name beside the
  target (``tempfile`` in the same folder, so the final ``os.replace`` is a rename on one file
  system) and renamed into place only when it is complete. A failure removes the temporary
  file or folder and leaves the target as it was.
* **nothing of the user's is lost**: replacing a folder first moves the old one to a fresh
  unique temporary name (never a fixed ``.NAME.old`` that might be someone's folder), swaps
  the new one in, and only then deletes the old one.
* **ordinary permissions**: ``mkstemp``/``mkdtemp`` create 0600 files and 0700 folders. What is
  published gets the mode an ordinary ``open()``/``mkdir()`` would give under the current umask
  (0644 / 0755 under umask 022), so others on a shared course server can read the data set,
  the configs and a converted model.

It is also the one reader of a model's ``config.json`` (`read_config`), so a missing or broken
file gets the same clear error wherever labkit meets it.

::

    from labkit import fileio
    fileio.write_text("out/report.md", text)
    fileio.write_json("out/result.json", data)
    with fileio.atomic_path("out/loss.png") as tmp:      # for writers that want a path
        fig.savefig(tmp, format="png")
    stage = fileio.make_stage("models/tuned")               # build a folder ...
    fileio.publish_folder(stage, "models/tuned")            # ... and swap it in
    config = fileio.read_config("models/tuned")             # its config.json, or a clear error
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent  # labkit/ (model code, assets)
REPO_ROOT = PACKAGE_DIR.parent  # the checkout: notebooks/, configs/, data/, runs/


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux: /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, then put it back at once
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 less the umask (0644 under 022)."""
    return 0o666 & ~current_umask()


def folder_mode() -> int:
    """The mode ``mkdir`` gives a new folder: 0777 less the umask (0755 under 022)."""
    return 0o777 & ~current_umask()


def _parent_of(path: Path) -> Path:
    """The folder ``path`` goes into, created if needed; refuse when ``path`` is a folder."""
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder, but a file should be written there; "
                                "choose a file name (or remove the folder yourself).")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise NotADirectoryError(f"{parent}: is a file, but {path.name} should be written inside it as a folder; "
                                 "choose another place.")
    parent.mkdir(parents=True, exist_ok=True)
    return parent


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a unique temporary path beside ``path``; on success it replaces ``path``.

    The temporary file is removed when the block raises. ``suffix`` (default: ``path``'s own)
    keeps libraries that pick a format from the name (PIL, matplotlib) happy.
    """
    path = Path(path)
    parent = _parent_of(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix if suffix is None else suffix,
                               dir=parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    return path


def write_text(path, text: str, encoding="utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8 by default); return the path."""
    return write_bytes(path, text.encode(encoding))


def write_json(path, data, indent=2, **dumps_kwargs) -> Path:
    """Write ``data`` as JSON (Chinese kept readable, newline at the end) atomically."""
    dumps_kwargs.setdefault("ensure_ascii", False)
    return write_text(path, json.dumps(data, indent=indent, **dumps_kwargs) + "\n")


def copy_file(source, path) -> Path:
    """Copy ``source`` to ``path`` atomically (the content only; the mode is an ordinary one)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)
    return path


def json_kind(value) -> str:
    """What a parsed JSON value is, in JSON's own words: object, array, string, number, true/false, null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    return {dict: "object", list: "array", str: "string", int: "number", float: "number"}.get(type(value),
                                                                                              type(value).__name__)


# -- reading a model's config.json ----------------------------------------------------------
class ConfigError(ValueError):
    """A ``config.json`` (or another JSON settings file) that is missing or not a JSON object."""


def config_path(path_or_folder) -> Path:
    """The ``config.json`` meant: ``path_or_folder`` itself, or the one inside a model folder."""
    path = Path(path_or_folder)
    return path / "config.json" if path.is_dir() else path


def read_config(path_or_folder) -> dict:
    """The JSON object in a model's ``config.json``; pass the file or the folder that holds it.

    Every reader of ``config.json`` in labkit comes here. ConfigError (a ValueError) names the
    file when it is missing, unreadable, not UTF-8, not JSON or not a JSON object. Other JSON
    settings files of a checkpoint (its weight index, ``tokenizer_config.json``) read the same way.
    """
    path = config_path(path_or_folder)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist: pass the model folder or its config.json.") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text ({err}); restore the file or rebuild the checkpoint.") from None
    except OSError as err:
        raise ConfigError(f"{path} cannot be read ({err.strerror or err}); check the path and its permissions.") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON ({err}); restore the file or rebuild the checkpoint.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} holds a JSON {json_kind(data)}, not an object of settings "
                          "({\"key\": value, ...}); restore the file or rebuild the checkpoint.")
    return data


# -- folders --------------------------------------------------------------------------------
def check_folder_target(path, what="output folder"):
    """Refuse a target folder that is a file, or lies inside one, naming it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path}: is a file, not a folder; the {what} must be a new or empty folder. "
                                 "Choose another name.")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"{parent}: is a file, so the {what} {path} cannot be created inside it. "
                                         "Choose another place.")
            break
    return path


def make_stage(target, what="output folder") -> Path:
    """A new empty temporary folder beside ``target``, to build it in before `publish_folder`."""
    target = check_folder_target(target, what)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))


def _chmod_tree(folder: Path) -> None:
    """Give the folder (and any file in it that mkstemp/mkdtemp made private) ordinary modes.

    Only the owner's write bit decides: a file somebody made read-only stays read-only.
    """
    dmode, fmode = folder_mode(), file_mode()
    os.chmod(folder, dmode)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            sub = os.path.join(root, name)
            if not os.path.islink(sub) and os.stat(sub).st_mode & 0o777 == 0o700:
                os.chmod(sub, dmode)
        for name in files:
            item = os.path.join(root, name)
            if not os.path.islink(item) and os.stat(item).st_mode & 0o777 == 0o600:
                os.chmod(item, fmode)


def publish_folder(stage, target) -> Path:
    """Move the finished ``stage`` folder to ``target``; an old ``target`` goes only after the swap.

    The old folder is first renamed to a unique temporary name made here (never a fixed one), so
    if anything fails in between, it is put back.
    """
    stage, target = Path(stage), Path(target)
    _chmod_tree(stage)
    if not target.exists():
        os.replace(stage, target)
        return target
    check_folder_target(target)
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.replaced-", dir=target.parent))
    try:
        os.replace(target, retired)  # an empty folder made by mkdtemp is replaced by the old one
    except BaseException:
        shutil.rmtree(retired, ignore_errors=True)
        raise
    try:
        os.replace(stage, target)
    except BaseException:
        os.replace(retired, target)
        raise
    shutil.rmtree(retired, ignore_errors=True)
    return target


def discard(stage) -> None:
    """Remove a temporary folder after a failure (quietly: the failure is what matters)."""
    if stage is not None:
        shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(target, what="output folder"):
    """``with staged_folder(out) as stage: ...`` builds in ``stage`` and publishes it as ``out``.

    On an exception the stage is removed and ``out`` is untouched.
    """
    stage = make_stage(target, what)
    try:
        yield stage
        publish_folder(stage, target)
    except BaseException:
        discard(stage)
        raise


def write_png(fig, path):
    """Write a figure as a PNG atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return path

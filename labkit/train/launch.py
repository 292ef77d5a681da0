"""Run XTuner's own training entry point (``xtuner.tools.train.main``) in this process.

Why not the ``xtuner train`` command? Two reasons, both seen on a CPU:

* ``xtuner train`` starts the real trainer in a child process and exits 0 even when training
  crashed, so a caller cannot tell success from failure. Here a crash ends this process with a
  non-zero exit code and the traceback in its output.
* XTuner's InternVL model asks ``torch.distributed.get_rank()`` on every step, which fails unless
  a process group exists, and ``--launcher pytorch`` insists on CUDA. A single process therefore
  opens a one-member process group itself (rank 0, world size 1): gloo on the CPU, NCCL on a GPU.

Several GPUs go through torchrun and XTuner's DeepSpeed path; torchrun sets RANK/WORLD_SIZE and
this module then hands over to XTuner's own ``--launcher pytorch`` set-up::

    python -m labkit.train.launch CONFIG --work-dir W                  # CPU or one GPU
    torchrun --nproc-per-node 2 -m labkit.train.launch CONFIG --work-dir W --deepspeed deepspeed_zero2

Any further arguments (``--seed``, ``--cfg-options``...) are passed to XTuner unchanged.
`labkit.train.finetune.train` builds these commands; students rarely call this module directly.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def open_single_process_group(backend: str) -> None:
    """A process group of one member, so `torch.distributed.get_rank()` answers 0."""
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group(backend=backend, rank=0, world_size=1)


def parse(argv):
    parser = argparse.ArgumentParser(prog="python -m labkit.train.launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="an XTuner config file (see labkit.train.xtuner_config.render_config)")
    parser.add_argument("--work-dir", required=True, help="folder for logs and checkpoints")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="default: cuda if a GPU is visible, else cpu")
    return parser.parse_known_args(argv)


def main(argv=None) -> int:
    args, rest = parse(sys.argv[1:] if argv is None else argv)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("labkit.train.launch: --device cuda, but torch sees no GPU on this machine.")
    xtuner_argv = [args.config, "--work-dir", args.work_dir, *rest]
    if launched_by_torchrun():
        # torchrun gave every process its rank; XTuner's own launcher opens the NCCL group.
        xtuner_argv += ["--launcher", "pytorch"]
        if device == "cuda":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    else:
        open_single_process_group("nccl" if device == "cuda" else "gloo")
    from xtuner.tools import train as xtuner_train

    sys.argv = ["xtuner.tools.train", *xtuner_argv]  # XTuner's main() reads its arguments from here
    try:
        xtuner_train.main()
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

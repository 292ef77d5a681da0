"""Deprecated: labkit.xtuner_launch moved to labkit.train.launch; this alias stays for one release.

Commands written before the move run ``torchrun ... -m labkit.xtuner_launch CONFIG``.
"""
import warnings

from labkit.train.launch import free_port, main  # noqa: F401

warnings.warn("labkit.xtuner_launch is deprecated: use labkit.train.launch", DeprecationWarning, stacklevel=2)

if __name__ == "__main__":
    raise SystemExit(main())

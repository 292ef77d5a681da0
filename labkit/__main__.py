"""`python -m labkit`: the `labkit` command (labkit.cli), for a shell where .venv/bin is not on PATH."""
from labkit.cli import main

raise SystemExit(main())

"""``python -m adapter <command>``."""

from adapter.cli import main

main()

"""``python -m adapter <command>``."""

from adapter.cli import main

if __name__ == "__main__":  # not when a spawned helper process imports it (fhir/validation_pool.py)
    main()

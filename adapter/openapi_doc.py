"""The OpenAPI document, built from the app itself (committed as openapi/openapi.json)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any


def openapi_document() -> dict[str, Any]:
    from adapter.bootstrap import build
    from adapter.migrate import upgrade
    from adapter.settings import Settings
    from adapter.web import create_app

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        settings = Settings(
            environment="test",
            database_url=f"sqlite:///{root / 'openapi.db'}",
            var_dir=root,
            master_key_file=root / "master.key",
            audit_signing_key_file=root / "audit.key",
        )
        upgrade(settings.database_url)
        container = build(settings)
        try:
            return create_app(container).openapi()
        finally:
            container.engine.dispose()

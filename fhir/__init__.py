"""The adapter's FHIR R4 front door.

fhir.resources installs a top-level package also named ``fhir``. Extending this
package's path lets both ``fhir.resources`` (site-packages) and our own modules
(``fhir.validate``, ``fhir.routes``, ...) be imported, as long as the repository
root comes before site-packages on ``sys.path`` (it does for ``python -m``,
pytest with ``rootdir`` and the Celery worker, all started from the repo root).
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_fhir_resources_importable_beside_our_fhir_package():
    code = ("import fhir.routes, fhir.validate; "
            "from fhir.resources.R4B.appointment import Appointment; "
            "import fhir.resources; print(fhir.routes.__file__, fhir.resources.__file__)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    ours, theirs = done.stdout.split()
    assert ours.startswith(str(ROOT / "fhir")) and "site-packages" in theirs

"""``make bench``: every benchmark in turn, each printing ratios against
baselines measured in the same run (this machine is shared and noisy)."""

from __future__ import annotations

import time
import traceback

from bench import dispatch, dispatch_batch, fhir_ingest, fhir_post, mllp, pipeline, scheduler


def main() -> int:
    started = time.monotonic()
    failed = []
    for bench in (fhir_post, mllp, pipeline, fhir_ingest, dispatch, dispatch_batch, scheduler):
        try:
            bench.main()
        except Exception:
            traceback.print_exc()
            failed.append(bench.__name__)
    print(f"\nbench done in {time.monotonic() - started:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


raise SystemExit(main())

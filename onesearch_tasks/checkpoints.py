"""A test hook that pauses a step at a named checkpoint, so a test can kill it there.

Crash-safety tests set ``ONESEARCH_PAUSE_AT=<checkpoint>`` and
``ONESEARCH_PAUSE_MARKER=<file>``. When the step reaches that checkpoint it writes its
process id to the marker file and sleeps for ``ONESEARCH_PAUSE_SECONDS`` (default 120),
then goes on. The test waits for the marker and sends SIGKILL to that process. Without
``ONESEARCH_PAUSE_AT`` a checkpoint does nothing.

Checkpoints:

- ``rq.saved``: run_rq has written model/, rq_codes.npy and residuals.npy, but the step is
  not yet recorded in the manifest.
- ``opq.saved``: run_opq has written opq.faiss, opq_codes.npy and the SID tables, but the
  step is not yet recorded in the manifest.
- ``publish.renamed``: publish_run has renamed the run folder into versions/, but
  CURRENT.json still names the previous version.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

logger = logging.getLogger(__name__)

PAUSE_AT_ENV = "ONESEARCH_PAUSE_AT"
PAUSE_MARKER_ENV = "ONESEARCH_PAUSE_MARKER"
PAUSE_SECONDS_ENV = "ONESEARCH_PAUSE_SECONDS"
DEFAULT_PAUSE_SECONDS = 120.0
CHECKPOINTS = ("rq.saved", "opq.saved", "publish.renamed")


def checkpoint(name: str) -> None:
    """Pause here when ONESEARCH_PAUSE_AT names this checkpoint; otherwise return at once."""
    if name not in CHECKPOINTS:
        raise ValueError(f"unknown checkpoint {name!r}; known: {', '.join(CHECKPOINTS)}")
    requested = os.environ.get(PAUSE_AT_ENV)
    if requested != name:
        return
    marker = os.environ.get(PAUSE_MARKER_ENV)
    if not marker:
        raise ValueError(f"{PAUSE_AT_ENV}={name} needs {PAUSE_MARKER_ENV} set to the marker file path")
    seconds = float(os.environ.get(PAUSE_SECONDS_ENV, DEFAULT_PAUSE_SECONDS))
    # Write then rename, so the test never reads a half-written process id.
    staging = Path(f"{marker}.tmp-{os.getpid()}")
    staging.write_text(f"{os.getpid()}\n", encoding="utf-8")
    os.replace(staging, marker)
    logger.warning("pausing at checkpoint %s for up to %.0f s (pid %d, marker %s)", name, seconds, os.getpid(), marker)
    time.sleep(seconds)
    logger.warning("pause at checkpoint %s ended; continuing", name)

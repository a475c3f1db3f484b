"""Prefect defaults for this project, applied by our entry points before Prefect is imported.

These machines are offline: Prefect's telemetry does a DNS look-up that fails and logs
"Failed to send telemetry" on every run, so it is switched off. Prefect's state (its SQLite
database, profiles, results) goes to a directory of ours instead of ``~/.prefect``. With no
``PREFECT_API_URL`` the flow runs against Prefect's local ephemeral server (a temporary
subprocess on 127.0.0.1), so no server has to be started by hand.

Prefect reads its settings once, when it is first imported; a value set afterwards is ignored.
That is why :func:`configure_prefect` refuses to run late rather than silently doing nothing.
A worker's flow-run subprocesses get the same defaults from the ``job_variables.env`` of the
deployments in ``prefect.yaml``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from schemas.settings import resolve_data_dir

__all__ = ["OFFLINE_DEFAULTS", "configure_prefect", "default_prefect_home"]

# Settings that keep Prefect off the network and quiet about it.
OFFLINE_DEFAULTS: dict[str, str] = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    # The UI would fetch upgrade prompts and banners from the internet.
    "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
}


def default_prefect_home(data_dir: Path | str | None = None) -> Path:
    """``{data_dir}/.prefect`` (data_dir: the argument, else BASIS_DATA_DIR, else ./data), absolute."""
    return (resolve_data_dir(data_dir) / ".prefect").resolve()


def configure_prefect(data_dir: Path | str | None = None, *, quiet_console: bool = False) -> dict[str, str]:
    """Set Prefect's environment defaults (values already in the environment win); return what was set.

    Args:
        data_dir: the data dir whose ``.prefect`` becomes PREFECT_HOME unless PREFECT_HOME is set.
        quiet_console: show only warnings and errors of Prefect on the terminal (the CLI draws its
            own progress bar). The flow-run logs still reach the Prefect database at INFO, so
            ``prefect server start`` with the same PREFECT_HOME shows them in the UI.

    Raises:
        RuntimeError: Prefect is already imported, so the settings would not take effect.
    """
    wanted = dict(OFFLINE_DEFAULTS)
    wanted["PREFECT_HOME"] = str(default_prefect_home(data_dir))
    if not os.environ.get("PREFECT_API_URL"):
        # The packaged default profile enables the ephemeral server, but a user profile may not.
        wanted["PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"] = "true"
        # It starts in about 6 s here (14 s on a fresh database); Prefect's default of 20 s is close.
        wanted["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "90"
    if quiet_console:
        wanted["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "WARNING"
    applied = {key: value for key, value in wanted.items() if key not in os.environ}
    if "prefect" in sys.modules:
        ineffective = {k: v for k, v in applied.items() if k != "DO_NOT_TRACK"}
        if ineffective:
            raise RuntimeError(
                "configure_prefect() must run before Prefect is imported; these settings would be "
                f"ignored: {', '.join(sorted(ineffective))}"
            )
    os.environ.update(applied)
    # Prefect creates its SQLite file but not the directory it lives in.
    Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    return applied

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

The local server dies with its parent
-------------------------------------
In its ephemeral mode Prefect starts that server from ``SubprocessASGIServer`` (prefect 3.9:
``_run_uvicorn_command`` and ``start`` in prefect/server/api/server.py,
https://github.com/PrefectHQ/prefect/blob/main/src/prefect/server/api/server.py) with a plain
``subprocess.Popen`` and stops it from an ``atexit`` hook. A process killed with SIGKILL runs no
hook, so every ``kill -9`` of a ``results-store`` command left a ~200 MB server running, adopted by
init. Prefect has no setting or hook for that ``Popen``, and it starts the server from whichever
thread first needs a client (the flow engine, the log or the events worker), while Linux's
``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child ends, not the process: so even
patching Prefect's ``Popen`` would not make the signal safe.

:func:`start_local_api_server` therefore starts the same server command itself, from the CLI's
main thread, and points ``PREFECT_API_URL`` at it before Prefect is imported. The child runs a
few lines that set ``PR_SET_PDEATHSIG`` to SIGKILL (it survives the ``exec``) and then exec
uvicorn, so the kernel kills the server whenever the command dies, however it dies. SIGKILL
rather than SIGTERM: the server's only client is gone, SQLite's journal keeps a killed writer
safe, and a server slow to shut down must not linger. A short trampoline rather than
``preexec_fn``, which Python documents as unsafe once threads exist. The alternatives were worse:
a watchdog thread would have to live in Prefect's server process; a watchdog process needs the
same parent-death signal itself; and a SIGKILL is never sent to the rest of a process group.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from importlib.util import find_spec
from pathlib import Path

from schemas.settings import resolve_data_dir

__all__ = ["OFFLINE_DEFAULTS", "LocalApiServer", "configure_prefect", "default_prefect_home", "start_local_api_server"]

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


# Runs in the server's process before uvicorn: argv[1] is the parent's pid, the rest uvicorn's args.
# PR_SET_PDEATHSIG is option 1 of prctl(2). If the parent died before the prctl, the kernel will
# never send the signal, hence the getppid check after it.
_DIE_WITH_PARENT = """\
import ctypes, os, signal, sys
if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_PDEATHSIG) failed: " + os.strerror(ctypes.get_errno()))
if os.getppid() != int(sys.argv[1]):
    sys.exit("the parent exited before the parent-death signal was set")
os.execv(sys.executable, [sys.executable, "-m", "uvicorn", *sys.argv[2:]])
"""
# What Prefect's ephemeral mode gives its server: no UI, only the services an ephemeral server runs.
_EPHEMERAL_SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
_UVICORN_STARTUP_FAILURE = 3  # uvicorn's exit code when it cannot start, e.g. the port was taken
_PORT_ATTEMPTS = 3


class LocalApiServer:
    """Prefect's local API server, a child process of ours that dies with us."""

    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s, as Prefect stops its own ephemeral server."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_local_api_server() -> LocalApiServer | None:
    """Unless ``PREFECT_API_URL`` is set, start Prefect's local API server as a child that dies with
    this process, and point ``PREFECT_API_URL`` at it (see the module docstring for why).

    Call it after :func:`configure_prefect` (the server reads the same settings) and before Prefect
    is imported, from the main thread. The server is stopped at exit by an ``atexit`` hook that,
    registered before Prefect's, runs after Prefect has flushed its last logs and events to it.

    Returns None, starting nothing, when ``PREFECT_API_URL`` is set; when Prefect is already
    imported (its settings are fixed, so whoever imported it has chosen its server: the tests'
    ``prefect_test_harness`` running a command in-process, say); and off Linux (no
    ``PR_SET_PDEATHSIG``: there Prefect's own ephemeral mode starts the server). The CLI imports
    Prefect only after this call; ``tests/test_no_orphans.py`` fails if that ever changes.

    Raises:
        RuntimeError: called off the main thread, or the server did not answer within
            ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`` (default 90 s).
    """
    if os.environ.get("PREFECT_API_URL") or "prefect" in sys.modules or sys.platform != "linux":
        return None
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("start_local_api_server() must run on the main thread: the server's parent-death "
                           "signal fires when the thread that started it ends")
    timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90"))
    deadline = time.monotonic() + timeout
    for _ in range(_PORT_ATTEMPTS):
        server = LocalApiServer(_spawn(port := _free_port()), port)
        while (code := server.process.poll()) is None:
            if _healthy(server.api_url):
                atexit.register(server.stop)
                os.environ["PREFECT_API_URL"] = server.api_url
                return server
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"Prefect's local API server did not answer on {server.api_url} within "
                                   f"{timeout:g} s (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)")
            time.sleep(0.1)
        if code != _UVICORN_STARTUP_FAILURE:
            break
    raise RuntimeError(f"Prefect's local API server exited at start-up with code {code} (its output is above)")


def _spawn(port: int) -> subprocess.Popen[bytes]:
    # --app-dir as Prefect passes it: uvicorn would otherwise put the working directory first on
    # sys.path, where a directory named "prefect" would shadow the package.
    spec = find_spec("prefect")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("prefect is not installed")
    app_dir = Path(next(iter(spec.submodule_search_locations))).parent
    uvicorn_args = ["--app-dir", str(app_dir), "--factory", "prefect.server.api.server:create_app",
                    "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"]
    # Output goes to our stdout and stderr, as with Prefect's ephemeral server.
    return subprocess.Popen([sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *uvicorn_args],
                            env={**os.environ, **_EPHEMERAL_SERVER_ENV}, stdin=subprocess.DEVNULL)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# No proxy: an http_proxy in the environment must not route our own loopback address.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _healthy(api_url: str) -> bool:
    try:
        with _DIRECT.open(f"{api_url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False

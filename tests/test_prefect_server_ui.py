"""The UI path for real: a local Prefect server, every deployment from prefect.yaml, a process
worker, and a rerun triggered with the API call the UI's Run button makes.

Every process the test starts gets its own process group (``start_new_session``, what ``set -m``
does in a shell), so a worker ignoring the first SIGTERM or a server's children cannot outlive it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from results_store.drive import run_snapshots_async
from results_store.reading import read_table, table_version
from results_store.runs import latest_run
from results_store.simulator.reference import ReferenceEngine
from schemas.modes import MODE_NAMES, load_mode

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
POOL = "results-store-pool"
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child has its own copy of the descriptor
        return subprocess.Popen(args, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL it if it is still there after 20 s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


# Prefect's server answers 503 while SQLite is locked by a concurrent writer (the worker and the
# flow run write states, logs and events at the same time); Prefect's own client retries 429/502/503
# with backoff, and so does this test, the way a person clicks Run again.
_RETRY_STATUS = {429, 502, 503}


def _api(method: str, url: str, **kwargs: Any) -> httpx.Response:
    for attempt in range(8):
        response = httpx.request(method, url, timeout=10, **kwargs)
        if response.status_code not in _RETRY_STATUS:
            return response
        time.sleep(min(0.5 * 2**attempt, 8))
    return response


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else f"(no {path.name})"


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real ``prefect server start`` on a free loopback port, SQLite in a temporary PREFECT_HOME.

    A server that cannot start fails the tests: the product needs one, so a skip would hide it.
    """
    home = tmp_path_factory.mktemp("prefect-server-home")
    data = tmp_path_factory.mktemp("worker-data")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({
        "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
        # Deployments keep their schedules, but no scheduled run is created while the test runs:
        # the worker must pick up only the runs the test triggers.
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
        # A scheduled run would otherwise write under ./data of the repository.
        "BASIS_DATA_DIR": str(data),
    })
    log = home / "server.log"
    server = _start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log)
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    try:
        while True:
            if server.poll() is not None:
                pytest.fail(f"prefect server exited at start-up (code {server.returncode}): {_tail(log, 2000)}")
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prefect server did not answer on 127.0.0.1:{port} within 120 s: {_tail(log, 2000)}")
            time.sleep(0.5)
        # PWD: prefect.yaml's pull step is `{{ $PWD }}`, resolved at deploy time.
        yield dict(env, PREFECT_API_URL=api, PWD=str(ROOT), PREFECT_WORKER_QUERY_SECONDS="2",
                   PREFECT_WORKER_PREFETCH_SECONDS="2")
    finally:
        _stop(server)


def _prefect(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run([str(BIN / "prefect"), *args], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _wait_for(api: str, flow_run_id: str, worker_log: Path, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run: dict[str, Any] = _api("GET", f"{api}/flow_runs/{flow_run_id}").json()
        if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(1)
    raise AssertionError(f"flow run {flow_run_id} did not finish in {timeout} s; worker log:\n{_tail(worker_log)}")


def _run_button(api: str, deployment_id: str, parameters: dict[str, Any]) -> str:
    """What the UI's Run button sends: the deployment's create_flow_run with the form's parameters."""
    response = _api("POST", f"{api}/deployments/{deployment_id}/create_flow_run", json={"parameters": parameters})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_deploy_all_registers_every_deployment_with_its_schedule_and_limits(prefect_server):
    env = prefect_server
    api = env["PREFECT_API_URL"]
    _prefect(["work-pool", "create", POOL, "--type", "process", "--overwrite"], env)
    _prefect(["--no-prompt", "deploy", "--all"], env)

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployed = _api("POST", f"{api}/deployments/filter", json={}).json()
    flows = {f["id"]: f["name"] for f in _api("POST", f"{api}/flows/filter", json={}).json()}
    by_name = {f"{flows[d['flow_id']]}/{d['name']}": d for d in deployed}
    assert len(by_name) == len(spec["deployments"]) == 8
    for name in ("backtest-results/on-demand", "backtest-inbox/every-5-minutes", "live-snapshots/every-minute",
                 "rerun-results/on-demand", "audit-results/nightly", "retention/nightly", "checksum/nightly",
                 "backup/nightly"):
        assert name in by_name, sorted(by_name)
        assert by_name[name]["work_pool_name"] == POOL
        assert by_name[name]["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(ROOT)
    schedules = {n: [s["schedule"] for s in d["schedules"]] for n, d in by_name.items()}
    assert schedules["live-snapshots/every-minute"] == [{"cron": "* * * * *", "timezone": "UTC", "day_or": True}]
    assert schedules["backtest-inbox/every-5-minutes"][0]["interval"] == 300
    assert schedules["rerun-results/on-demand"] == [] and schedules["backtest-results/on-demand"] == []
    live = by_name["live-snapshots/every-minute"]
    assert live["global_concurrency_limit"]["limit"] == 1
    assert live["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
    assert by_name["backtest-inbox/every-5-minutes"]["job_variables"]["env"]["DO_NOT_TRACK"] == "1"
    # The Run form: typed parameters with descriptions and a drop-down of modes.
    form = by_name["backtest-results/on-demand"]["parameter_openapi_schema"]["properties"]
    assert form["mode"]["enum"] == list(MODE_NAMES)
    assert form["run_id"]["description"] and form["snapshot_file"]["description"]


def test_a_rerun_triggered_like_the_ui_run_button_writes_a_new_version_with_lineage(prefect_server, tmp_path):
    env = prefect_server
    api = env["PREFECT_API_URL"]
    mode = load_mode("eth_leveraged")
    snapshots = ReferenceEngine(mode, "2024-01-01", "2024-01-02", "15min", seed=5).iter_snapshots()
    asyncio.run(run_snapshots_async(mode, snapshots, data_dir=tmp_path, run_id="desk-1"))
    balance_rows = read_table(tmp_path, "backtest", "balance_sheet", run_id="desk-1").num_rows

    _prefect(["work-pool", "create", POOL, "--type", "process", "--overwrite"], env)
    _prefect(["--no-prompt", "deploy", "--name", "rerun-results/on-demand"], env)
    worker_log = tmp_path / "worker.log"
    worker = _start([str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process"], env, worker_log)
    try:
        deployment = _api("GET", f"{api}/deployments/name/rerun-results/on-demand").json()
        lean = ["balance_sheet", "pnl_attribution", "risk_metrics", "execution_log", "leverage_tracking"]

        # A new run: lineage parent = desk-1.
        run = _wait_for(api, _run_button(api, deployment["id"], {
            "run_id": "desk-1", "new_run_id": "desk-1-lean", "data_dir": str(tmp_path), "result_types": lean,
        }), worker_log)
        assert run["state"]["type"] == "COMPLETED", _tail(worker_log)
        child = latest_run(tmp_path, "backtest", "desk-1-lean")
        assert child is not None and child["parent_run_id"] == "desk-1" and child["status"] == "finished"
        assert read_table(tmp_path, "backtest", "balance_sheet", run_id="desk-1-lean").num_rows == balance_rows
        assert read_table(tmp_path, "backtest", "dust_tracking", run_id="desk-1-lean").num_rows == 0

        # In place: new versions of desk-1's partitions; the versions before stay readable. Leaving out
        # dust_tracking empties it, which the form only does when asked to (empty_dropped_tables).
        dust_before = table_version(tmp_path, "backtest", "dust_tracking")
        run = _wait_for(api, _run_button(api, deployment["id"], {
            "run_id": "desk-1", "data_dir": str(tmp_path), "result_types": lean, "empty_dropped_tables": True,
        }), worker_log)
        assert run["state"]["type"] == "COMPLETED", _tail(worker_log)
        record = latest_run(tmp_path, "backtest", "desk-1")
        assert record is not None
        versions = record["table_versions"]
        assert versions["before"]["dust_tracking"] == dust_before
        assert versions["after"]["dust_tracking"] > dust_before
        assert table_version(tmp_path, "backtest", "dust_tracking") == versions["after"]["dust_tracking"]
        assert read_table(tmp_path, "backtest", "dust_tracking", run_id="desk-1").num_rows == 0
        old = read_table(tmp_path, "backtest", "dust_tracking", run_id="desk-1", version=dust_before)
        assert old.num_rows == 96 * 3

        artifacts = _api("POST", f"{api}/artifacts/filter", json={"artifacts": {"key": {"any_": ["rerun-desk-1"]}}}).json()
        assert artifacts and "version after" in artifacts[0]["data"]
    finally:
        _stop(worker)

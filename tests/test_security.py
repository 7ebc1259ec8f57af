"""The outsider of issue 21, replayed against the locked deployment: with nothing but the address
sites connect to and the federation's public CA certificate, an outsider cannot list runs or read
their logs, register a SuperNode, join with an unregistered key, or run an app of their own on the
sites; the proxy forwards the Fleet API alone, however the path is written; the Runtime API wants
the SuperExec secret; and the operator's own run (TLS + SuperNode authentication) completes.

One deployment (real flower-superlink, flower-superexec, nginx, two flower-supernode processes)
serves every probe, made while the operator's run is in progress, as in the issue. The legacy
gRPC proxy is tested in test_legacy_proxy.py.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import free_port, make_small_data

from fedspeech.base.errors import UsageError
from fedspeech.tools import deployment, proxy
from fedspeech.tools.deployment import CONNECTION, Deployment
from fedspeech.tools.flower_keys import write_ec_keypair
from fedspeech.tools.flower_procs import BIN, Processes, environment, flwr, submit, wait_for_run
from fedspeech.tools.flower_run import build_parser, run_config

slow = pytest.mark.slow

# The outsider's own app: its ServerApp and every ClientApp that runs write a marker file (and a
# ClientApp copies the site's node config into it).
FOREIGN_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "foreign"
version = "1.0.0"
description = "not the federation's app"
license = "MIT"
dependencies = ["flwr>=1.42"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "outsider"

[tool.flwr.app.components]
serverapp = "foreign_app:server"
clientapp = "foreign_app:client"

[tool.flwr.app.config]
marker = "MARKER"
"""
FOREIGN_APP = """\
import json
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

server = ServerApp()
client = ClientApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    marker = context.run_config["marker"]
    Path(marker + ".server").write_text("the outsider's ServerApp ran")
    nodes = list(grid.get_node_ids())
    content = RecordDict({"c": ConfigRecord({"marker": marker})})
    grid.send_and_receive([Message(content, dst_node_id=n, message_type="query") for n in nodes])


@client.query()
def query(msg: Message, context: Context) -> Message:
    marker = Path(msg.content["c"]["marker"] + ".site." + str(context.node_config.get("cid")))
    marker.write_text(json.dumps(dict(context.node_config)))
    return Message(RecordDict(), reply_to=msg)
"""


def need_nginx() -> None:
    """nginx is part of the locked setup: CI installs it (.ci/run); elsewhere a skip says how."""
    try:
        proxy.nginx_binary()
    except UsageError as err:
        if os.environ.get("CI"):
            pytest.fail(f"error: {err}", pytrace=False)
        pytest.skip(str(err))


@dataclass
class Locked:
    dep: Deployment
    procs: Processes
    run_id: int
    tmp: Path
    marker: Path

    def outsider(self) -> dict[str, str]:
        """A fresh FLWR_HOME naming only what every site is given: the address and ca.crt."""
        home = self.tmp / "outsider_home"
        home.mkdir(exist_ok=True)
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "target"\n\n[superlink.target]\n'
            f'address = "{self.dep.site_address}"\nroot-certificates = "{self.dep.ca}"\n')
        return environment(home)


@contextmanager
def locked_deployment(tmp: Path) -> Iterator[Locked]:
    """TLS + SuperNode authentication, locked: two sites joined, the operator's run started."""
    data = make_small_data(tmp / "data", per_client=8)
    save = tmp / "deploy"
    (save / "logs").mkdir(parents=True)
    procs = Processes(save / "logs", environment(save / "flwr_home"))
    try:
        dep = deployment.start(procs, save, tls=True, auth=True)
        for k in range(2):
            deployment.start_supernode(dep, procs, f"supernode_{k}", {
                "cid": str(k), "data-path": str(data), "tr-path": str(data),
                "dev-path": str(data / "dev.tsv")})
        args = build_parser().parse_args([
            "deploy", "--rounds", "1", "--num_supernodes", "2", "--save_path", str(save),
            "--data_path", str(data), "--dev_path", str(data / "dev.tsv"),
            "--test_path", str(data / "test.tsv"), "--tr_add_path", "",
            "--tokenizer_path", str(data / "train.tsv"), "--run_config", "fraction-evaluate=0",
            # the locked deployment runs the operator's rounds through SecAgg+ (issue 20): the
            # App's secure path on the Deployment Engine, behind TLS, authentication and the proxy
            "--run_config", "secure-aggregation=true"])
        run_id = submit(dep.env, CONNECTION, [], run_config(args, str(data)))
        yield Locked(dep, procs, run_id, tmp, tmp / "foreign-ran")
    finally:
        procs.stop_all()


def refused(result: subprocess.CompletedProcess) -> str:
    """The CLI failed, and because the proxy said 403."""
    text = result.stdout + result.stderr
    assert result.returncode != 0, text
    assert "403" in text and "Forbidden" in text, text
    return text


def cannot_list_runs_or_read_their_logs(locked: Locked) -> None:
    outsider = locked.outsider()
    text = refused(flwr(outsider, "ls", "target", check=False))
    assert str(locked.run_id) not in text
    refused(flwr(outsider, "log", str(locked.run_id), "target", "--show", check=False))
    # The same command on the SuperLink's own address (the server host) lists the run: the
    # probe works, and the proxy is what stops it.
    home = dict(outsider, FLWR_HOME=str(locked.tmp / "server_host"))
    Path(home["FLWR_HOME"]).mkdir(exist_ok=True)
    (Path(home["FLWR_HOME"]) / "config.toml").write_text(
        '[superlink]\ndefault = "here"\n\n[superlink.here]\n'
        f'address = "{locked.dep.operator_address}"\nroot-certificates = "{locked.dep.ca}"\n')
    assert str(locked.run_id) in flwr(home, "ls", "here").stdout


def cannot_register_a_node_nor_join_with_its_key(locked: Locked) -> None:
    private, public = write_ec_keypair(locked.tmp / "intruder" / "intruder.key")
    refused(flwr(locked.outsider(), "supernode", "register", str(public), "target", check=False))
    # Its SuperNode exits once refused (the SuperExec it started lingers: stop_all ends it).
    intruder = locked.procs.start("intruder", [
        str(BIN / "flower-supernode"), "--superlink", locked.dep.site_address,
        "--root-certificates", str(locked.dep.ca), "--auth-supernode-private-key", str(private),
        "--port", str(free_port()), "--node-config", f'cid="intruder" data-path="{locked.tmp}"'])
    assert intruder.wait(120) != 0
    assert "Failed to activate SuperNode" in (locked.dep.save / "logs" / "intruder.log").read_text()
    nodes = json.loads(flwr(locked.dep.env, "supernode", "list", CONNECTION, "--format",
                            "json").stdout)
    assert len(nodes["nodes"]) == 2, nodes  # the two sites the operator registered


def cannot_run_an_app(locked: Locked) -> None:
    app = locked.tmp / "foreign"
    app.mkdir()
    (app / "pyproject.toml").write_text(FOREIGN_PYPROJECT.replace("MARKER", str(locked.marker)))
    (app / "foreign_app.py").write_text(FOREIGN_APP)
    refused(flwr(locked.outsider(), "run", ".", "target", check=False, cwd=app))


def http(address: str, ca: Path, method: str, path: str) -> int:
    """The status of one HTTPS request, its path sent exactly as written (no normalising)."""
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection((host, int(port)), timeout=30) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
                    "application/protobuf\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .encode())
        return int(tls.recv(64).split()[1])


def proxy_forwards_the_fleet_api_alone(locked: Locked) -> None:
    site, ca = locked.dep.site_address, locked.dep.ca
    forbidden = ["/v1/control/list-runs", "/v1/control/start-run", "/v1/control/register-node",
                 "/v1/runtime/acquire-task", "/v1/fleet/../control/list-runs",
                 "/v1/fleet/%2e%2e/control/list-runs", "/v1/fleet/..%2fcontrol/list-runs",
                 "//v1/control/list-runs", "/V1/CONTROL/list-runs", "/docs", "/openapi.json"]
    assert {p: http(site, ca, "POST", p) for p in forbidden} == dict.fromkeys(forbidden, 403)
    assert http(site, ca, "GET", "/docs") == 403
    assert http(site, ca, "GET", "/v1/fleet/get-run") == 403  # the Fleet API is POST only
    assert http(site, ca, "GET", "/health") == 200
    # Fleet calls reach the SuperLink, which wants a registered node's signature.
    assert http(site, ca, "POST", "/v1/fleet/get-run") == 401
    assert http(site, ca, "POST", "/v1/fleet/register-node") == 401
    # A path that only looks like the Control API once decoded is routed as the Fleet API.
    assert http(site, ca, "POST", "/v1/control/%2e%2e/fleet/get-run") == 401
    # On the server host the Control API answers anyone (why the SuperLink stays on loopback).
    assert http(locked.dep.operator_address, ca, "POST", "/v1/control/list-runs") == 200


def runtime_api_wants_the_superexec_secret(locked: Locked) -> None:
    """Even on the server host, no ServerApp task without the SuperExec's shared secret."""
    assert http(locked.dep.operator_address, locked.dep.ca, "POST",
                "/v1/runtime/acquire-task") == 401


def operator_run_completes_and_no_foreign_code_ran(locked: Locked) -> None:
    status = wait_for_run(locked.dep.env, CONNECTION, locked.run_id,
                          locked.dep.save / "logs", 400)
    assert status == "finished:completed", (locked.dep.save / "logs" / "run.log").read_text()
    history = json.loads((locked.dep.save / "history.json").read_text())
    assert set(history[0]["coefficients"]) == {"0", "1"}  # the two sites, and no one else
    assert history[0]["secure_aggregation"] == "secagg+" and history[0]["accepted"]
    for name in ("global_model.ckpt", "final_model.ckpt", "history.png"):
        assert (locked.dep.save / name).is_file(), name  # the run's outputs, as on every road
    assert not list(locked.tmp.glob("foreign-ran*"))
    runs = json.loads(flwr(locked.dep.env, "ls", CONNECTION, "--format", "json").stdout)["runs"]
    assert [int(r["run-id"]) for r in runs] == [locked.run_id]
    described = json.loads((locked.dep.save / "deployment.json").read_text())
    assert described["site_address"] != described["operator_address"]
    assert described["locked"] and described["operator_address"].startswith("127.0.0.1:")


@slow
def test_outsider_is_refused_at_every_step_while_the_operator_run_completes(
        tmp_path: Path) -> None:
    """Every probe against one deployment, made while the operator's run is in progress. One
    test, not one per probe: pytest-xdist may give a module's tests to different workers, and
    each would then bring up a deployment of its own."""
    need_nginx()
    with locked_deployment(tmp_path) as locked:
        cannot_list_runs_or_read_their_logs(locked)
        cannot_register_a_node_nor_join_with_its_key(locked)
        cannot_run_an_app(locked)
        proxy_forwards_the_fleet_api_alone(locked)
        runtime_api_wants_the_superexec_secret(locked)
        operator_run_completes_and_no_foreign_code_ran(locked)


# ---- the configuration and its mistakes (no processes) -----------------------------------------
def test_missing_nginx_is_one_line_and_nothing_starts(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proxy.shutil, "which", lambda *a, **k: None)
    procs = Processes(tmp_path, {})
    with pytest.raises(UsageError, match=r"nginx not found .*apt-get install -y nginx"):
        deployment.start(procs, tmp_path, tls=True, auth=True)
    assert procs.procs == []


def test_the_proxy_refuses_to_front_a_superlink_sites_could_reach(tmp_path: Path) -> None:
    certs = [tmp_path / n for n in ("ca.crt", "server.crt", "server.key")]
    for path in certs:
        path.write_text("x")
    with pytest.raises(UsageError, match="must listen on loopback"):
        proxy.superlink_config("0.0.0.0:9092", "0.0.0.0:9091", *certs, tmp_path / "c",
                               tmp_path / "r")
    with pytest.raises(UsageError, match="must listen on loopback"):
        proxy.grpc_client_config("0.0.0.0:8443", "server:8443", None, *certs, tmp_path / "c",
                                 tmp_path / "r")
    (tmp_path / "a;b").write_text("x")  # a file name that would end nginx's directive
    with pytest.raises(UsageError, match="characters nginx would read"):
        proxy.superlink_config("0.0.0.0:9092", "127.0.0.1:9091", certs[0], certs[1],
                               tmp_path / "a;b", tmp_path / "c", tmp_path / "r")


@pytest.mark.parametrize("role", ["superlink", "grpc-server", "grpc-client"])
def test_every_block_says_what_it_allows(tmp_path: Path, role: str) -> None:
    """Each server and location block of the generated file comes after a comment."""
    certs = [tmp_path / n for n in ("ca.crt", "server.crt", "server.key")]
    for path in certs:
        path.write_text("x")
    make = {"superlink": lambda: proxy.superlink_config(
                "0.0.0.0:9092", "127.0.0.1:9091", *certs, tmp_path / "c", tmp_path / "r"),
            "grpc-server": lambda: proxy.grpc_server_config(
                "0.0.0.0:8443", "127.0.0.1:8080", *certs, None, tmp_path / "c", tmp_path / "r"),
            "grpc-client": lambda: proxy.grpc_client_config(
                "127.0.0.1:8443", "server.example.org:8443", None, *certs, tmp_path / "c",
                tmp_path / "r")}
    lines = [line.strip() for line in make[role]().splitlines()]
    blocks = [i for i, line in enumerate(lines) if line.startswith(("server {", "location "))]
    assert blocks
    for i in blocks:
        before = lines[i - 1] if lines[i - 1].startswith("#") else lines[i - 2]
        assert before.startswith("#"), lines[i]
    assert "@" not in "".join(line for line in lines if not line.startswith("#"))

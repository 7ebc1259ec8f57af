"""server.py's proxy (issue 21): nginx in front of the legacy gRPC server lets in only clients
that show a certificate from the federation's CA; a site shows its certificate through nginx of
its own, since flwr.compat's client cannot. Real nginx on both sides, real flwr.compat server and
client processes, and client.py as a site runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, client_cmd, free_port, spawn
from test_security import need_nginx

from fedspeech.tools import proxy
from fedspeech.tools.flower_procs import Processes

# A minimal legacy server and client: the proxy carries Flower's protocol, whatever the model.
LEGACY_PEER = """\
import sys

import flwr as fl
import numpy as np

role, address = sys.argv[1], sys.argv[2]
if role == "server":
    strategy = fl.server.strategy.FedAvg(min_fit_clients=1, min_available_clients=1,
                                         fraction_evaluate=0.0)
    fl.server.start_server(server_address=address, strategy=strategy,
                           config=fl.server.ServerConfig(num_rounds=1))
    print("legacy server: 1 round done")
else:
    class Site(fl.client.NumPyClient):
        def get_parameters(self, config):
            return [np.zeros(3)]

        def fit(self, parameters, config):
            return [parameters[0] + 1], 1, {}

    fl.client.start_client(server_address=address, client=Site().to_client(), insecure=True)
    print("legacy client: done")
"""


def certificates(folder: Path, *clients: str) -> Path:
    subprocess.run(["bash", str(ROOT / "scripts" / "make_certs.sh"), str(folder)], check=True,
                   capture_output=True)
    for name in clients:
        subprocess.run(["bash", str(ROOT / "scripts" / "make_certs.sh"), "--client", name,
                        str(folder)], check=True, capture_output=True)
    return folder


def start_nginx(procs: Processes, name: str, text: str, config: Path, listen: str) -> None:
    run_dir = config.with_suffix(".d")
    proxy.write_config(text, config, run_dir)
    proxy.wait_listening(procs.start(name, proxy.command(config, run_dir)), listen, run_dir)


@pytest.mark.slow
def test_legacy_grpc_proxy_wants_a_client_certificate(small_data: Path, tmp_path: Path) -> None:
    """server.py's proxy lets in a site showing its certificate (through the site's own proxy)
    and refuses client.py without one, a certificate from another CA, and the server's own."""
    need_nginx()
    certs = certificates(tmp_path / "certs", "site-a")
    other = certificates(tmp_path / "other", "mallory")
    (tmp_path / "logs").mkdir()
    (tmp_path / "peer.py").write_text(LEGACY_PEER)
    procs = Processes(tmp_path / "logs", {**os.environ, "PYTHONUNBUFFERED": "1"})
    front_port = free_port()
    upstream, front = f"127.0.0.1:{free_port()}", f"127.0.0.1:{front_port}"
    try:
        server = procs.start("server", [sys.executable, str(tmp_path / "peer.py"), "server",
                                        upstream])
        start_nginx(procs, "front", proxy.grpc_server_config(
            front, upstream, certs / "ca.crt", certs / "server.crt", certs / "server.key", None,
            tmp_path / "front.conf", tmp_path / "front.d"), tmp_path / "front.conf", front)
        sites = {}
        for name, (folder, crt) in {"site-a": (certs, "site-a"), "mallory": (other, "mallory"),
                                    "server-cert": (certs, "server")}.items():
            sites[name] = f"127.0.0.1:{free_port()}"
            start_nginx(procs, name, proxy.grpc_client_config(
                sites[name], front, "localhost", certs / "ca.crt", folder / f"{crt}.crt",
                folder / f"{crt}.key", tmp_path / f"{name}.conf", tmp_path / f"{name}.d"),
                tmp_path / f"{name}.conf", sites[name])
        peer = [sys.executable, str(tmp_path / "peer.py"), "client"]
        bad = [procs.start(f"client_{name}", [*peer, sites[name]])
               for name in ("mallory", "server-cert")]
        # client.py as a site runs it, with the CA but no certificate to show.
        no_cert = spawn(client_cmd(small_data, tmp_path / "c0", front_port, 0,
                                   "--root_certificates", str(certs / "ca.crt"),
                                   "--max_wait", "5"), tmp_path / "logs" / "client_py.log")
        procs.procs.append(no_cert)
        assert [proc.wait(60) != 0 for proc in bad] == [True, True]
        assert no_cert.wait(120) == 2
        assert server.poll() is None  # nobody got in: the server still waits for a client
        assert procs.start("client_site-a", [*peer, sites["site-a"]]).wait(60) == 0
        assert server.wait(60) == 0
    finally:
        procs.stop_all()
    log = (tmp_path / "logs" / "client_py.log").read_text()
    assert "error: --server_address" in log and "400" in log, log
    errors = (tmp_path / "front.d" / "error.log").read_text()
    assert "client sent no required SSL certificate" in errors
    assert "unable to verify the first certificate" in errors  # another CA's certificate
    assert "unsuitable certificate purpose" in errors  # the server's, not made for clients
    assert "legacy server: 1 round done" in (tmp_path / "logs" / "server.log").read_text()

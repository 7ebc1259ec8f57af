"""The Deployment Engine on this machine, as the sites and the server would run it.

Insecure, TLS, or locked (TLS + SuperNode authentication): the open-source SuperLink serves its
Fleet, Control and Runtime APIs on one port and asks no one who calls the Control API, so whoever
reaches that port can start runs (their code then runs on every site), read the runs and register
SuperNodes. Locked, the SuperLink listens on 127.0.0.1 only and sites reach an nginx proxy that
forwards the Fleet API alone (:mod:`fedspeech.tools.proxy`); the Runtime API also wants the
SuperExec's shared secret (``--isolation process`` with a ``flower-superexec`` of our own, since
Flower ignores the secret in subprocess isolation). ``<save>/deployment.json`` names the address
sites connect to and the operator's.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from fedspeech.base.paths import ROOT
from fedspeech.tools import proxy
from fedspeech.tools.flower_keys import write_ec_keypair
from fedspeech.tools.flower_procs import BIN, Processes, environment, flwr
from fedspeech.tools.launch import free_port, wait_for_port

CONNECTION = "deploy"  # the operator's name for the SuperLink in its FLWR_HOME/config.toml


@dataclass
class Deployment:
    """A running SuperLink (and proxy); the operator's environment talks to the SuperLink."""

    save: Path
    env: dict[str, str]
    operator_address: str
    site_address: str
    certs: Path | None
    auth: bool
    proxy_config: Path | None = None
    secret: Path | None = None

    @property
    def ca(self) -> Path | None:
        return self.certs / "ca.crt" if self.certs else None

    @property
    def locked(self) -> bool:
        return self.proxy_config is not None

    def describe(self) -> dict[str, object]:
        return {
            "site_address": self.site_address, "operator_address": self.operator_address,
            "superlink_listens_on": self.operator_address, "locked": self.locked,
            "tls": self.certs is not None, "supernode_auth": self.auth,
            "root_certificates": str(self.ca) if self.ca else None,
            "proxy_config": str(self.proxy_config) if self.proxy_config else None,
            "superexec_secret_file": str(self.secret) if self.secret else None,
            "flwr_home": self.env["FLWR_HOME"],
        }


def write_secret(path: Path) -> Path:
    """A fresh random SuperExec secret, readable by this account only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))  # read by Flower as raw bytes: no newline
    return path


def start(procs: Processes, save: Path, *, tls: bool, auth: bool) -> Deployment:
    """Start the SuperLink (and, with ``tls`` and ``auth``, its SuperExec and the proxy)."""
    locked = tls and auth
    nginx = proxy.nginx_binary() if locked else ""  # missing: one line, before anything starts
    env = environment(save / "flwr_home")
    port = free_port()
    address = f"127.0.0.1:{port}"
    dep = Deployment(save=save, env=env, operator_address=address, site_address=address,
                     certs=save / "certificates" if tls else None, auth=auth)
    link = ["--host", "127.0.0.1", "--port", str(port), "--database", str(save / "superlink.db")]
    connection = f'[superlink.{CONNECTION}]\naddress = "{address}"\n'
    if dep.certs:
        subprocess.run(["bash", str(ROOT / "scripts" / "make_certs.sh"), str(dep.certs),
                        "localhost,127.0.0.1"], check=True, stdout=subprocess.DEVNULL)
        link += ["--ssl-ca-certfile", str(dep.ca), "--ssl-certfile",
                 str(dep.certs / "server.crt"), "--ssl-keyfile", str(dep.certs / "server.key")]
        connection += f'root-certificates = "{dep.ca}"\n'
    else:
        link.append("--insecure")
        connection += "insecure = true\n"
    if auth:
        link.append("--enable-supernode-auth")
    if locked:
        dep.secret = write_secret(save / "secrets" / "superexec.secret")
        link += ["--isolation", "process", "--superexec-auth-secret-file", str(dep.secret)]
    (save / "flwr_home").mkdir(parents=True, exist_ok=True)
    (save / "flwr_home" / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n' + connection)
    superlink = procs.start("superlink", [str(BIN / "flower-superlink"), *link])
    wait_for_port(port, superlink, 120)
    if locked:
        start_superexec(dep, procs, superlink.pid)
        start_proxy(dep, procs, nginx)
    (save / "deployment.json").write_text(json.dumps(dep.describe(), indent=2) + "\n")
    return dep


def start_superexec(dep: Deployment, procs: Processes, superlink_pid: int) -> None:
    """The SuperLink's SuperExec (it starts the ServerApps), signing with the shared secret."""
    procs.start("superexec", [
        str(BIN / "flower-superexec"), "--runtime-api-address", dep.operator_address,
        "--root-certificates", str(dep.ca), "--superexec-auth-secret-file", str(dep.secret),
        "--parent-pid", str(superlink_pid)])


def start_proxy(dep: Deployment, procs: Processes, nginx: str) -> None:
    """nginx on a port of its own: what sites connect to (the Fleet API only)."""
    listen = f"127.0.0.1:{free_port()}"
    folder = dep.save / "proxy"
    config, run_dir = folder / "superlink-proxy.conf", folder / "run"
    text = proxy.superlink_config(listen, dep.operator_address, dep.ca,
                                  dep.certs / "server.crt", dep.certs / "server.key",
                                  config, run_dir)
    proxy.write_config(text, config, run_dir)
    nginx_proc = procs.start("proxy", proxy.command(config, run_dir, nginx))
    proxy.wait_listening(nginx_proc, listen, run_dir)
    dep.proxy_config, dep.site_address = config, listen


def start_supernode(dep: Deployment, procs: Processes, name: str, node_config: dict[str, str],
                    *, register: bool = True) -> subprocess.Popen:
    """A site's SuperNode, connecting where sites connect; with authentication, its own key
    pair, registered by the operator unless ``register`` is false (it must then be refused)."""
    tls = ["--root-certificates", str(dep.ca)] if dep.ca else ["--insecure"]
    if dep.auth:
        private, public = write_ec_keypair(dep.save / "keys" / name)
        if register:
            flwr(dep.env, "supernode", "register", str(public), CONNECTION)
        tls += ["--auth-supernode-private-key", str(private)]
    config = " ".join(f'{key}="{value}"' for key, value in node_config.items())
    return procs.start(name, [str(BIN / "flower-supernode"), *tls,
                              "--superlink", dep.site_address, "--port", str(free_port()),
                              "--node-config", config])

"""nginx in front of the federation's server: the configuration, written for given addresses,
and the process.

    proxy.py superlink --listen 0.0.0.0:9092 --superlink 127.0.0.1:9091 \\
        --certificates certificates/ca.crt certificates/server.crt certificates/server.key \\
        --out /etc/fedspeech/superlink-proxy.conf
    proxy.py grpc-server --listen 0.0.0.0:8443 --server 127.0.0.1:8080 \\
        --certificates certificates/ca.crt certificates/server.crt certificates/server.key \\
        --out /etc/fedspeech/server-proxy.conf
    proxy.py grpc-client --listen 127.0.0.1:8443 --remote server.example.org:8443 \\
        --certificates ca.crt site-a.crt site-a.key --out site-proxy.conf

``superlink``: sites reach the SuperLink's Fleet API (and its health check) and nothing else; the
Control and Runtime APIs, which the open-source SuperLink serves on the same port without asking
who calls, stay on the server host. ``grpc-server``: server.py lets in only clients with a
certificate from the federation's CA. ``grpc-client``: at a site, carries client.py's plain gRPC
on loopback to the server's proxy, showing the site's certificate (flwr.compat's client cannot).
Each configuration is one file that says in comments what each block allows and why; see
``fedspeech/tools/nginx/*.conf.template``.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import subprocess
import sys
from pathlib import Path

from fedspeech.base.checks import check_file, parse_address
from fedspeech.base.cli import ArgumentParser, run_cli
from fedspeech.base.errors import UsageError
from fedspeech.tools.launch import wait_for_port

TEMPLATES = Path(__file__).resolve().parent / "nginx"
INSTALL_HINT = "install it with: apt-get install -y nginx"
NGINX_SYNTAX = set(";{}\"'$#")  # in a value, these would end or change a directive


def nginx_binary() -> str:
    """The nginx program (also looked for in /usr/sbin, which a non-root PATH often lacks)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which("nginx", path=path)
    if not found:
        raise UsageError(f"nginx not found (the proxy in front of the server); {INSTALL_HINT}")
    return found


def render(role: str, values: dict[str, str], config: Path, run_dir: Path) -> str:
    """``main.conf.template`` around ``<role>.conf.template``, every ``@NAME@`` filled in."""
    server = (TEMPLATES / f"{role}.conf.template").read_text(encoding="utf-8")
    text = (TEMPLATES / "main.conf.template").read_text(encoding="utf-8")
    text = text.replace("@SERVER@", server.rstrip("\n"))
    for name, value in {**values, "ROLE": role, "CONFIG": str(config),
                        "RUN_DIR": str(run_dir)}.items():
        if not value or any(c in NGINX_SYNTAX or c.isspace() for c in value):
            raise UsageError(f"{name.lower()} {value!r}: empty, or holds characters nginx "
                             "would read as syntax (spaces, quotes, ;{}$#)")
        text = text.replace(f"@{name}@", value)
    left = sorted({part.split("@")[0] for part in text.split("@")[1::2] if part.isupper()})
    if left:
        raise RuntimeError(f"{role}.conf.template: no value for {left}")
    return text


def address(value: str, flag: str) -> str:
    """``host:port`` as nginx wants it (IPv6 in brackets), checked."""
    host, port = parse_address(value, flag)
    host = host.strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(addr: str) -> bool:
    host = addr.rsplit(":", 1)[0].strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def tls_files(ca: str | Path, cert: str | Path, key: str | Path, flag: str) -> dict[str, str]:
    for path in (ca, cert, key):
        check_file(path, flag)
    return {"CA": str(Path(ca).resolve()), "CERT": str(Path(cert).resolve()),
            "KEY": str(Path(key).resolve())}


def superlink_config(listen: str, superlink: str, ca: str | Path, cert: str | Path,
                     key: str | Path, config: Path, run_dir: Path) -> str:
    """Sites' side of a SuperLink: the Fleet API and health only, TLS with the server's
    certificate; the SuperLink must listen on loopback (else sites could skip the proxy)."""
    upstream = address(superlink, "--superlink")
    if not is_loopback(upstream):
        raise UsageError(f"--superlink {superlink}: the SuperLink must listen on loopback "
                         "(127.0.0.1), or sites could reach its Control API past the proxy")
    return render("superlink", {
        "LISTEN": address(listen, "--listen"), "SUPERLINK": upstream,
        # The name nginx checks in the SuperLink's certificate (the proxy's own; make_certs.sh
        # always names localhost): nginx 1.22 matches DNS names only, never IP addresses.
        "SUPERLINK_NAME": "localhost",
        **tls_files(ca, cert, key, "--certificates")}, config, run_dir)


def grpc_server_config(listen: str, server: str, ca: str | Path, cert: str | Path,
                       key: str | Path, client_ca: str | Path | None, config: Path,
                       run_dir: Path) -> str:
    """In front of server.py: TLS, and a client certificate from ``client_ca`` (default: the
    federation's CA) required of every client."""
    upstream = address(server, "--server")
    if not is_loopback(upstream):
        raise UsageError(f"--server {server}: server.py must listen on loopback (127.0.0.1), "
                         "or clients without a certificate could reach it past the proxy")
    files = tls_files(ca, cert, key, "--certificates")
    check_file(client_ca, "--client_ca")
    return render("grpc-server", {
        "LISTEN": address(listen, "--listen"), "SERVER": upstream,
        "CLIENT_CA": str(Path(client_ca).resolve()) if client_ca else files["CA"], **files},
        config, run_dir)


def grpc_client_config(listen: str, remote: str, server_name: str | None, ca: str | Path,
                       cert: str | Path, key: str | Path, config: Path, run_dir: Path) -> str:
    """At a site: plain gRPC on loopback in, TLS with the site's certificate out."""
    local = address(listen, "--listen")
    if not is_loopback(local):
        raise UsageError(f"--listen {listen}: the site's proxy takes plain gRPC, so it must "
                         "listen on loopback (127.0.0.1)")
    target = address(remote, "--remote")
    return render("grpc-client", {
        "LISTEN": local, "REMOTE": target,
        "SERVER_NAME": server_name or target.rsplit(":", 1)[0].strip("[]"),
        **tls_files(ca, cert, key, "--certificates")}, config, run_dir)


def write_config(text: str, config: Path, run_dir: Path) -> Path:
    """Write the configuration and make its run folder; ``nginx -t`` must accept it."""
    config.parent.mkdir(parents=True, exist_ok=True)
    (run_dir / "tmp").mkdir(parents=True, exist_ok=True)
    config.write_text(text, encoding="utf-8")
    test = subprocess.run([nginx_binary(), "-t", "-q", "-c", str(config), "-e",
                           str(run_dir / "error.log")], capture_output=True, text=True)
    if test.returncode != 0:
        lines = (test.stderr or test.stdout).strip().splitlines()
        raise UsageError(f"{config}: nginx refused it: {lines[-1] if lines else test.returncode}")
    return config


def command(config: Path, run_dir: Path, nginx: str | None = None) -> list[str]:
    """nginx in the foreground (its master process is the one to stop)."""
    return [nginx or nginx_binary(), "-c", str(config), "-e", str(run_dir / "error.log"),
            "-g", "daemon off;"]


def wait_listening(proc: subprocess.Popen, listen: str, run_dir: Path,
                   timeout: float = 30) -> None:
    """Return once nginx listens on ``listen``'s port; else fail with its error log's end."""
    try:
        wait_for_port(int(listen.rsplit(":", 1)[1]), proc, timeout)
    except RuntimeError as err:
        log = run_dir / "error.log"
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.is_file() else []
        raise RuntimeError(f"nginx did not start ({err}): {' '.join(tail)}") from None


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="role", required=True)
    roles = {
        "superlink": sub.add_parser("superlink", help="in front of flower-superlink"),
        "grpc-server": sub.add_parser("grpc-server", help="in front of server.py"),
        "grpc-client": sub.add_parser("grpc-client", help="at a site, in front of client.py"),
    }
    roles["superlink"].add_argument("--superlink", required=True,
                                    help="the SuperLink's --host:--port (loopback)")
    roles["grpc-server"].add_argument("--server", required=True,
                                      help="server.py's --server_address (loopback)")
    roles["grpc-server"].add_argument("--client_ca", default=None,
                                      help="CA of the client certificates (default: CA)")
    roles["grpc-client"].add_argument("--remote", required=True,
                                      help="the server's proxy, host:port")
    roles["grpc-client"].add_argument("--server_name", default=None,
                                      help="name in the server's certificate (default: "
                                           "the host of --remote)")
    for name, q in roles.items():
        q.add_argument("--listen", required=True, help="host:port this proxy listens on")
        cert = "SITE_CRT SITE_KEY" if name == "grpc-client" else "CERT KEY"
        q.add_argument("--certificates", nargs=3, required=True, metavar=("CA", *cert.split()),
                       help=f"ca.crt {cert.lower().replace('_', '.')} (scripts/make_certs.sh)")
        q.add_argument("--out", required=True, help="the configuration file to write")
        q.add_argument("--run_dir", default=None,
                       help="pid file, logs, temporary files (default: <out>.d)")
    return p


def run(args: argparse.Namespace) -> None:
    config = Path(args.out).resolve()
    run_dir = Path(args.run_dir).resolve() if args.run_dir else config.with_suffix(".d")
    ca, cert, key = args.certificates
    if args.role == "superlink":
        text = superlink_config(args.listen, args.superlink, ca, cert, key, config, run_dir)
    elif args.role == "grpc-server":
        text = grpc_server_config(args.listen, args.server, ca, cert, key, args.client_ca,
                                  config, run_dir)
    else:
        text = grpc_client_config(args.listen, args.remote, args.server_name, ca, cert, key,
                                  config, run_dir)
    write_config(text, config, run_dir)
    print(f"proxy: wrote {config} (nginx -t accepts it); start it with: nginx -c {config}")


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())

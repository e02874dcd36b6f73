#!/usr/bin/env python3
"""A local kernel against a Jupyter Kernel Gateway kernel and an Enterprise Gateway kernel: per-cell round trip
(median, p95 of 200 trivial cells) and one cell that prints 20 MB (wall seconds, whether it arrived whole).

With --eg-venv (default .venv-eg, when it holds jupyter-enterprisegateway) it also starts an Enterprise Gateway
3.3 on 127.0.0.1 with the same token and a LocalProcessProxy kernelspec (the --venv python's ipykernel), and the
script adds its row (KERNEL_USERNAME=bench: EG run as root refuses root). EG has no IOPub rate limit.

Starts a real kernel gateway (jupyter_kernel_gateway from the venv) on 127.0.0.1 with a random token, then
runs `cellsci script benches/gateway.lua` with CELLSCI_GATEWAY_URL, CELLSCI_GATEWAY_TOKEN and
CELLSCI_BENCH_PYTHON (the venv's python, for the local kernel) set. A benchmark, not a test: it prints
figures. When the script fails it prints its output and the tail of the gateway's log, and exits 1.

The gateway's IOPub rate limit (jupyter_server's ZMQChannelsWebsocketConnection: 1 MB/s over 3 s, on by
default) replaces a 20 MB print by a short "IOPub data rate exceeded" notice while the cell still reports
"ok"; this driver turns it off (iopub_data_rate_limit=0) unless --rate-limit is given.

    python3 benches/gateway.py [--cellsci target/release/cellsci] [--venv .venv] [--cells 200] [--rate-limit]
                               [--gateway-arg=--Some.option=value ...]
"""
import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def tail(path, n=40):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(no log)"


class Gateway:
    def __init__(self, venv, extra):
        self.dir = tempfile.mkdtemp(prefix="cellsci-bench-gateway-")
        self.runtime = os.path.join(self.dir, "runtime")
        for sub in ("runtime", "data", "config"):
            os.makedirs(os.path.join(self.dir, sub))
        self.log = os.path.join(self.dir, "gateway.log")
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        # The venv's own python3 kernelspec only: the user's data and config dirs are replaced by empty ones.
        env = dict(os.environ, JUPYTER_RUNTIME_DIR=self.runtime, JUPYTER_DATA_DIR=os.path.join(self.dir, "data"),
                   JUPYTER_CONFIG_DIR=os.path.join(self.dir, "config"), PYTHONUNBUFFERED="1")
        env.pop("JUPYTER_PATH", None)
        cmd = [os.path.join(venv, "bin", "python"), "-m", "kernel_gateway",
               "--KernelGatewayApp.ip=127.0.0.1", f"--KernelGatewayApp.port={self.port}",
               "--KernelGatewayApp.port_retries=0", f"--KernelGatewayApp.auth_token={self.token}",
               "--JupyterWebsocketPersonality.list_kernels=True"] + extra
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.dir, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, secs=60):
        deadline = time.monotonic() + secs
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"the kernel gateway exited ({self.proc.returncode}); its log:\n{tail(self.log)}")
            try:
                rq = urllib.request.Request(self.url + "/api/kernelspecs",
                                            headers={"Authorization": f"token {self.token}"})
                with urllib.request.urlopen(rq, timeout=5) as r:
                    specs = json.load(r)
                if not {"python3", "python3_local"} & set(specs.get("kernelspecs", {})):
                    sys.exit(f"the gateway offers no python3 kernel: {specs}")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
        sys.exit(f"the kernel gateway did not answer within {secs} s; its log:\n{tail(self.log)}")

    def kernel_pids(self):
        """Processes whose command line names our runtime dir: the kernels it started (new sessions)."""
        pids = []
        for e in os.listdir("/proc"):
            if e.isdigit() and int(e) != self.proc.pid:
                try:
                    with open(f"/proc/{e}/cmdline", "rb") as f:
                        if self.runtime.encode() in f.read():
                            pids.append(int(e))
                except OSError:
                    pass
        return pids

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for pid in self.kernel_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


class Enterprise:
    """Enterprise Gateway from its own venv, one LocalProcessProxy kernelspec `python3_local`."""

    def __init__(self, eg_venv, venv, token):
        self.dir = tempfile.mkdtemp(prefix="cellsci-bench-eg-")
        self.runtime = os.path.join(self.dir, "runtime")
        spec_dir = os.path.join(self.dir, "jp", "kernels", "python3_local")
        os.makedirs(spec_dir)
        os.makedirs(self.runtime)
        with open(os.path.join(spec_dir, "kernel.json"), "w") as f:
            json.dump({"argv": [os.path.join(venv, "bin", "python"), "-m", "ipykernel_launcher", "-f",
                                "{connection_file}"], "display_name": "Python 3", "language": "python",
                       "metadata": {"process_proxy": {"class_name":
                           "enterprise_gateway.services.processproxies.processproxy.LocalProcessProxy"}}}, f)
        self.log = os.path.join(self.dir, "eg.log")
        self.port = free_port()
        self.token = token
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, JUPYTER_PATH=os.path.join(self.dir, "jp"), JUPYTER_RUNTIME_DIR=self.runtime,
                   EG_AUTH_TOKEN=token, EG_RESPONSE_PORT=str(free_port()), EG_KERNEL_LOG_DIR=self.dir,
                   PYTHONUNBUFFERED="1")
        cmd = [os.path.join(eg_venv, "bin", "jupyter-enterprisegateway"), "--ip=127.0.0.1", f"--port={self.port}",
               "--port_retries=0", "--EnterpriseGatewayApp.default_kernel_name=python3_local"]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.dir, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    wait_ready = Gateway.wait_ready
    kernel_pids = Gateway.kernel_pids
    stop = Gateway.stop


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cellsci", default="target/release/cellsci")
    ap.add_argument("--venv", default=os.environ.get("CELLSCI_TEST_VENV", ".venv"))
    ap.add_argument("--script", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "gateway.lua"))
    ap.add_argument("--cells", type=int, default=200)
    ap.add_argument("--rate-limit", action="store_true", help="keep the gateway's default IOPub rate limit")
    ap.add_argument("--gateway-arg", action="append", default=[], help="one more gateway argument (repeatable)")
    ap.add_argument("--eg-venv", default=os.environ.get("CELLSCI_EG_VENV", ".venv-eg"),
                    help="the Enterprise Gateway venv (no EG row when it has no jupyter-enterprisegateway)")
    a = ap.parse_args()
    venv, cellsci = os.path.abspath(a.venv), os.path.abspath(a.cellsci)
    if not os.path.isfile(cellsci):
        sys.exit(f"no cellsci binary at {cellsci} (cargo build --release, or --cellsci PATH)")
    extra = ([] if a.rate_limit else ["--ZMQChannelsWebsocketConnection.iopub_data_rate_limit=0"]) + a.gateway_arg
    g = Gateway(venv, extra)
    eg_venv = os.path.abspath(a.eg_venv)
    eg = None
    if os.path.isfile(os.path.join(eg_venv, "bin", "jupyter-enterprisegateway")):
        eg = Enterprise(eg_venv, venv, g.token)
    else:
        print(f"no Enterprise Gateway in {eg_venv}: no EG row", file=sys.stderr)
    ok = False  # the temp dir (gateway log) is kept when anything failed
    try:
        g.wait_ready()
        print(f"gateway {g.url} (log {g.log})", file=sys.stderr)
        env = dict(os.environ, CELLSCI_GATEWAY_URL=g.url, CELLSCI_GATEWAY_TOKEN=g.token,
                   CELLSCI_BENCH_PYTHON=os.path.join(venv, "bin", "python"), CELLSCI_BENCH_CELLS=str(a.cells),
                   NO_COLOR="1")
        if eg:
            eg.wait_ready()
            print(f"enterprise gateway {eg.url} (log {eg.log})", file=sys.stderr)
            env.update(CELLSCI_EG_URL=eg.url, KERNEL_USERNAME="bench")
        t = time.monotonic()
        p = subprocess.run([cellsci, "script", a.script], env=env, capture_output=True, text=True)
        wall = time.monotonic() - t
        if p.stdout:
            print(p.stdout, end="")
        if p.returncode != 0:
            print(f"\nFAILED: `cellsci script {a.script}` exited {p.returncode} after {wall:.1f} s", file=sys.stderr)
            print(f"--- its stderr ---\n{p.stderr}", file=sys.stderr)
            print(f"--- gateway log ({g.log}), last lines ---\n{tail(g.log)}", file=sys.stderr)
            if eg:
                print(f"--- enterprise gateway log ({eg.log}), last lines ---\n{tail(eg.log)}", file=sys.stderr)
            sys.exit(1)
        if p.stderr.strip():
            print(p.stderr, end="", file=sys.stderr)
        print(f"(script wall {wall:.1f} s)")
        ok = True
    finally:
        g.stop()
        if eg:
            eg.stop()
    if ok:
        shutil.rmtree(g.dir, ignore_errors=True)
        if eg:
            shutil.rmtree(eg.dir, ignore_errors=True)


if __name__ == "__main__":
    main()

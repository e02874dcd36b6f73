//! Gateway kernels against a real Jupyter Kernel Gateway on 127.0.0.1 with a token
//! (`util::gateway`), driven from Lua through `cellsci script` like the local kernel tests: start, cells,
//! display updates, interrupt, death, restart, a gateway killed mid-cell, a WebSocket dropped mid-cell
//! (through a loopback proxy the test cuts), the idle culler, a wrong token, path mapping, mixed pools
//! and `notebook run --gateway`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::util::gateway::{Gateway, GatewayOpts};
use crate::util::{self, ok};

/// The Lua snippet's prelude: `kernel`, `URL` (the gateway), `PY` (the test venv's python).
fn script(dir: &Path, url: &str, body: &str) -> std::process::Command {
    let src = format!(
        "local kernel = require('kernel')\nlocal json = require('json')\nlocal URL = {url:?}\nlocal PY = {:?}\n{body}\n",
        util::test_venv().join("bin/python").display().to_string()
    );
    let f = util::write(dir, "t.lua", &src);
    let mut c = util::cellsci(dir);
    c.arg("script").arg(f);
    c
}

/// Run a snippet against `gw` with its token in CELLSCI_GATEWAY_TOKEN.
fn lua(dir: &Path, gw: &Gateway, body: &str) -> Output {
    let o = script(dir, &gw.url, body).env("CELLSCI_GATEWAY_TOKEN", &gw.token).output().expect("run cellsci");
    assert!(!util::text(&o).contains(&gw.token), "the token never shows:\n{}", util::text(&o));
    o
}

/// Run a snippet that must end by printing OK.
#[track_caller]
fn passes(gw: &Gateway, body: &str) {
    let d = util::tempdir();
    let out = ok(&lua(d.path(), gw, body));
    assert!(out.contains("OK"), "{out}");
}

/// Start a snippet in the background (its token from `token`); `{m}` in `body` is the path of a marker
/// file a cell writes when the moment has come to act on it. Returns once the marker exists.
#[track_caller]
fn start_until_marker(url: &str, token: &str, body: &str) -> (util::Running, tempfile::TempDir) {
    let d = util::tempdir();
    let marker = d.path().join("started");
    let body = body.replace("{m}", &marker.display().to_string());
    let mut cmd = script(d.path(), url, &body);
    cmd.env("CELLSCI_GATEWAY_TOKEN", token);
    let run = util::Running::start(&mut cmd);
    util::wait_until("the cell to start", 60, || marker.exists());
    (run, d)
}

#[test]
fn a_gateway_kernel_runs_cells_like_a_local_one_and_is_deleted_on_shutdown() {
    let gw = Gateway::start();
    passes(
        &gw,
        r#"
local specs = assert(kernel.specs{gateway = URL})
assert(specs[1].name == "python3" and specs[1].gateway == URL, "the gateway's kernelspecs")
-- a generous grace: on a loaded machine the interrupt below must not turn into a restart
local k = assert(kernel.start{gateway = URL, env = {MY_VAR = "hello"}, interrupt_grace = 20})
assert(k.gateway == URL and tostring(k):find("on " .. URL, 1, true), tostring(k))
assert(k:pid() == nil, "no local pid for a remote kernel")
local r = k:execute("import os, sys\nprint('out', os.environ['MY_VAR'], flush=True); print('err', file=sys.stderr, flush=True)\n6 * 7")
assert(r.status == "ok", r.status)
assert(r.outputs[1].text == "out hello\n" and r.outputs[2].name == "stderr", json.encode(r.outputs))
assert(r.outputs[3].data["text/plain"] == "42" and r.execution_count == 1, json.encode(r.outputs))
-- a display updated later, in another cell, and an error with its traceback
r = k:execute("from IPython.display import display\nh = display('first', display_id=True)")
assert(r.outputs[1].data["text/plain"] == "'first'")
r = k:execute("h.update('second')")
assert(r.status == "ok" and #r.outputs == 0, json.encode(r))
r = k:execute("1/0")
assert(r.status == "error" and r.ename == "ZeroDivisionError" and r.traceback:find("ZeroDivisionError"), json.encode(r))
-- a hung cell is interrupted through the gateway, its output kept, the kernel still usable
r = k:execute("import time\nprint('before', flush=True)\ntime.sleep(60)", {timeout = 1})
assert(r.status == "timeout" and not r.restarted and r.outputs[1].text == "before\n", json.encode(r))
r = k:execute("x = 5\nx")
assert(r.status == "ok" and r.outputs[1].data["text/plain"] == "5", "the kernel survived the interrupt")
-- restart: a fresh kernel, the environment given again
assert(k:restart())
r = k:execute("print('x' in dir(), os.environ.get('MY_VAR') if 'os' in dir() else __import__('os').environ['MY_VAR'])")
assert(r.outputs[1].text == "False hello\n", json.encode(r.outputs))
k:shutdown()
assert(not k:alive())
print("OK")
"#,
    );
    assert!(gw.kernels().is_empty(), "shutdown deletes the kernel on the gateway: {:?}", gw.kernels());
    assert!(gw.kernel_pids().is_empty(), "and its process is gone");
}

#[test]
fn a_dying_kernel_is_dead_and_a_restart_brings_a_fresh_one() {
    let gw = Gateway::start();
    passes(
        &gw,
        r#"
local k = assert(kernel.start{gateway = URL})
k:execute("state = 1")
local r = k:execute("print('going', flush=True)\nimport os; os._exit(1)")
assert(r.status == "dead" and r.ename == "DeadKernelError", json.encode(r))
assert(r.message:find("died on the gateway"), r.message)
assert(not k:alive())
r = k:execute("1")
assert(r.status == "dead" and r.message:find("k:restart"), "a dead kernel says so until restarted: " .. json.encode(r))
assert(k:restart())
r = k:execute("print('state' in dir())")
assert(r.status == "ok" and r.outputs[1].text == "False\n", json.encode(r))
print("OK")
"#,
    );
    // the script ended without k:shutdown(): dropping the handle deleted the kernel
    assert!(gw.kernels().is_empty(), "{:?}", gw.kernels());
}

#[test]
fn a_gateway_killed_mid_cell_is_reported_dead_and_a_restart_uses_the_new_gateway() {
    let mut gw = Gateway::start_with(GatewayOpts::default().orphan_kernelspec());
    let (run, _d) = start_until_marker(
        &gw.url,
        &gw.token,
        r#"
local k = assert(kernel.start{gateway = URL, name = "python3-orphan"})
local r = k:execute("import time\nprint('begin', flush=True)\ntime.sleep(0.5)\nopen('{m}', 'w').write('x')\ntime.sleep(30)\nprint('end')")
print("STATUS", r.status, r.message)
assert(r.status == "dead", json.encode(r))
assert(r.outputs[1] and r.outputs[1].text == "begin\n", "what the cell printed before is kept: " .. json.encode(r.outputs))
assert(not k:alive())
assert(k:restart())
r = k:execute("print('on the new gateway')")
assert(r.status == "ok" and r.outputs[1].text == "on the new gateway\n", json.encode(r))
print("OK")
"#,
    );
    gw.kill();
    gw.restart();
    let (status, out) = run.finish();
    assert!(status.success(), "{out}");
    assert!(out.contains("no longer has the kernel"), "dead, because the restarted gateway lost it:\n{out}");
    assert!(out.contains("OK"), "{out}");
}

/// A loopback TCP proxy in front of the gateway whose open connections the test can cut, as a network
/// or a proxy dropping a WebSocket would; new connections keep working.
pub(crate) struct CutProxy {
    pub(crate) url: String,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl CutProxy {
    pub(crate) fn start(target_port: u16) -> CutProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (c2, s2) = (conns.clone(), stop.clone());
        std::thread::spawn(move || {
            for inbound in l.incoming() {
                if s2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(inbound) = inbound else { continue };
                let Ok(outbound) = TcpStream::connect(("127.0.0.1", target_port)) else { continue };
                c2.lock().unwrap().extend([inbound.try_clone().unwrap(), outbound.try_clone().unwrap()]);
                for (mut from, mut to) in
                    [(inbound.try_clone().unwrap(), outbound.try_clone().unwrap()), (outbound, inbound)]
                {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 65536];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        CutProxy { url, conns, stop }
    }

    /// Reset every open connection.
    pub(crate) fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
    }
}

#[test]
fn a_websocket_dropped_mid_cell_reconnects_and_the_cell_finishes_whole() {
    let gw = Gateway::start();
    let proxy = CutProxy::start(gw.port);
    let (run, _d) = start_until_marker(
        &proxy.url,
        &gw.token,
        r#"
local k = assert(kernel.start{gateway = URL})
k:execute("state = 41")
local r = k:execute("import time\nprint('a', flush=True)\ntime.sleep(0.5)\nopen('{m}', 'w').write('x')\ntime.sleep(2)\nprint('b')\nstate + 1")
print("STATUS", r.status, json.encode(r.outputs))
assert(r.status == "ok", json.encode(r))
assert(r.outputs[1].text == "a\nb\n", "the output sent while we were away was replayed: " .. json.encode(r.outputs))
assert(r.outputs[2].data["text/plain"] == "42", "the same kernel, its state kept")
assert(k:alive())
print("OK")
"#,
    );
    proxy.cut();
    let (status, out) = run.finish();
    assert!(status.success(), "{out}");
    assert!(out.contains("reconnecting"), "the drop is reported:\n{out}");
    assert!(out.contains("OK"), "{out}");
}

#[test]
fn a_kernel_culled_while_idle_is_dead_then_restarted_as_a_new_kernel() {
    // a kernel with a client connected is culled only with cull_connected (cellsci keeps a WebSocket open)
    let gw = Gateway::start_with(GatewayOpts::default().culler(2, 1).arg("--MappingKernelManager.cull_connected=True"));
    passes(
        &gw,
        r#"
local time = require("time")
local k = assert(kernel.start{gateway = URL})
assert(k:execute("x = 1").status == "ok")
-- the gateway's idle culler deletes the kernel (after 2 s idle, checked every second); the next cell
-- learns it from the gateway
time.sleep(6)
local r = k:execute("print(1)")
assert(r.status == "dead" and r.message:find("no longer has the kernel"), json.encode(r))
assert(k:restart())
r = k:execute("print('x' in dir())")
assert(r.status == "ok" and r.outputs[1].text == "False\n", json.encode(r))
print("OK")
"#,
    );
}

/// A loopback HTTP server that answers every request with 503 Service Unavailable.
fn unavailable_server() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let body = r#"{"message": "the gateway is restarting"}"#;
            let _ = write!(
                c,
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

#[test]
fn a_wrong_token_or_no_gateway_fails_the_start_with_a_kind_the_policy_can_read() {
    let gw = Gateway::start();
    let d = util::tempdir();
    let o = script(
        d.path(),
        &gw.url,
        r#"
local k, err = kernel.start{gateway = URL}
assert(not k and err.kind == "auth", tostring(err))
print("AUTH", err.message)
local specs, err2 = kernel.specs{gateway = URL}
assert(not specs and err2.kind == "auth")
-- nothing listens on port 9 of loopback
k, err = kernel.start{gateway = "http://127.0.0.1:9"}
assert(not k and err.kind == "connect", tostring(err))
k, err = kernel.start{gateway = URL:gsub("^http", "ftp")}
assert(not k and err.kind == "config", tostring(err))
-- a gateway in trouble (HTTP 503): kind server, which the kernel retry policy waits for
k, err = kernel.start{gateway = UNAVAILABLE}
assert(not k and err.kind == "server" and err.message:find("503"), tostring(err))
print("OK")
"#
        .replace("UNAVAILABLE", &format!("{:?}", unavailable_server()))
        .as_str(),
    )
    .env("CELLSCI_GATEWAY_TOKEN", "wrong-token-0123456789")
    .output()
    .unwrap();
    let out = ok(&o);
    assert!(out.contains("refused the token") && out.contains("CELLSCI_GATEWAY_TOKEN"), "{out}");
    assert!(!out.contains("wrong-token-0123456789"), "the token never shows: {out}");
    assert!(out.contains("OK"), "{out}");
}

#[test]
fn a_pool_mixes_local_and_gateway_kernels() {
    let gw = Gateway::start();
    passes(
        &gw,
        r#"
local pool = assert(kernel.pool{size = 3, gateway = URL, local_slots = 1, python = PY})
assert(pool:size() == 3 and pool:remote() == 2, tostring(pool))
local a = assert(pool:acquire())
local b = assert(pool:acquire())
local c = assert(pool:acquire())
local here, there = 0, 0
for _, k in ipairs({a, b, c}) do
  if k.gateway then there = there + 1 else here = here + 1 end
  local r = k:execute("import os; print(os.getpid())")
  assert(r.status == "ok", json.encode(r))
end
assert(here == 1 and there == 2, here .. " local, " .. there .. " on the gateway")
-- given back: restarted fresh, on the same side
a:execute("leftover = 1")
pool:release(a); pool:release(b); pool:release(c)
for _ = 1, 3 do
  local k = assert(pool:acquire())
  assert(k:execute("print('leftover' in dir())").outputs[1].text == "False\n")
end
pool:shutdown()
print("OK")
"#,
    );
    util::wait_until("the pool's gateway kernels to be deleted", 30, || gw.kernels().is_empty());
}

#[test]
fn notebook_run_executes_a_notebook_on_a_gateway_kernel() {
    let gw = Gateway::start();
    let d = util::tempdir();
    let nb = json!({
        "cells": [
            {"cell_type": "code", "execution_count": null, "id": "a", "metadata": {}, "outputs": [],
             "source": "import os\nprint(os.getppid())"},
            {"cell_type": "code", "execution_count": null, "id": "b", "metadata": {}, "outputs": [],
             "source": "21 * 2"}
        ],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5
    });
    let input = util::write(d.path(), "nb.ipynb", &nb.to_string());
    let o = util::cellsci(d.path())
        .args(["notebook", "run", "--gateway", &gw.url])
        .arg(&input)
        .env("CELLSCI_GATEWAY_TOKEN", &gw.token)
        .output()
        .unwrap();
    let out = ok(&o);
    let done: Value = serde_json::from_str(&std::fs::read_to_string(d.path().join("nb.out.ipynb")).unwrap()).unwrap();
    let text = |v: &Value| match v {
        Value::Array(parts) => parts.iter().filter_map(Value::as_str).collect::<String>(),
        v => v.as_str().unwrap_or_default().to_string(),
    };
    let ppid = text(&done["cells"][0]["outputs"][0]["text"]).trim().parse::<i32>().ok();
    let ppid = ppid.unwrap_or_else(|| panic!("{out}\n{:#}", done["cells"][0]));
    assert_eq!(Some(ppid), gw.pid(), "the kernel is a child of the gateway");
    assert_eq!(text(&done["cells"][1]["outputs"][0]["data"]["text/plain"]), "42");
    assert!(gw.kernels().is_empty(), "the kernel was deleted at the end");
    // a wrong token: exit 2 and a message that says what to set
    let o = util::cellsci(d.path())
        .args(["notebook", "run", "--gateway", &gw.url])
        .arg(&input)
        .env("CELLSCI_GATEWAY_TOKEN", "not-the-token-at-all")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", util::text(&o));
    assert!(util::text(&o).contains("refused the token"), "{}", util::text(&o));
}

#[test]
fn ctrl_c_during_a_gateway_cell_exits_130_and_deletes_the_kernel() {
    let gw = Gateway::start();
    let (run, _d) = start_until_marker(
        &gw.url,
        &gw.token,
        r#"
local k = assert(kernel.start{gateway = URL})
local r, err = k:execute("import time\nopen('{m}', 'w').write('x')\ntime.sleep(60)")
print("AFTER", r, err and err.kind)
error("interrupted", 0)
"#,
    );
    assert_eq!(gw.kernels().len(), 1);
    run.signal(libc::SIGINT);
    let (status, out) = run.finish();
    assert_eq!(status.code(), Some(130), "{out}");
    assert!(out.contains("AFTER\tnil\tinterrupted"), "the cell's call ends with kind interrupted:\n{out}");
    assert!(gw.kernels().is_empty(), "the kernel was deleted on the way out: {:?}", gw.kernels());
}

#[test]
fn a_second_ctrl_c_quits_at_once_and_still_deletes_the_gateway_kernels() {
    let gw = Gateway::start();
    // the script ignores the first Ctrl-C's end of the cell and starts another: only a quit at once ends it
    let (run, _d) = start_until_marker(
        &gw.url,
        &gw.token,
        r#"
local k = assert(kernel.start{gateway = URL})
local k2 = assert(kernel.start{gateway = URL})
k:execute("import time\nopen('{m}', 'w').write('x')\ntime.sleep(60)")
print("FIRST CTRL-C SEEN")
while true do k2:execute("import time\ntime.sleep(60)") end
"#,
    );
    assert_eq!(gw.kernels().len(), 2);
    run.signal(libc::SIGINT);
    util::wait_until("the first Ctrl-C to end the cell", 30, || run.output().contains("FIRST CTRL-C SEEN"));
    run.signal(libc::SIGINT);
    let (status, out) = run.finish();
    assert_eq!(status.code(), Some(130), "{out}");
    assert!(out.contains("interrupted again"), "{out}");
    assert!(gw.kernels().is_empty(), "both kernels were deleted on the way out: {:?}", gw.kernels());
}

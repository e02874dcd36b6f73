//! cellsci against a real Jupyter Enterprise Gateway 3.3 (`util::enterprise`, its own venv made by
//! `.ci/run`): the gateway behaviours cellsci's client is built on, pinned as observed; kernels through
//! EG from Lua (`cellsci script`), `notebook run`, a whole `run` under the unified runner's checks; EG
//! run as root and cellsci sending its user; a launch timeout; an unknown kernelspec; a remote kernel
//! killed; the gateway killed and restarted; and, with an sshd on 127.0.0.2, kernels launched over SSH
//! by EG's DistributedProcessProxy, and that sshd stopped in the middle of a run.
//!
//! Every test skips loudly (and fails under CI=true) where EG or sshd is not installed.

use std::path::Path;
use std::process::Output;

use serde_json::{json, Value};

use crate::util::enterprise::{EgOpts, Enterprise};
use crate::util::gateway::pid_alive;
use crate::util::{self, ok};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `cellsci --config <exec> script` of a Lua snippet whose prelude is `kernel`, `json`, `URL` (EG),
/// with EG's token in CELLSCI_GATEWAY_TOKEN.
fn script(dir: &Path, eg: &Enterprise, exec: &Value, body: &str) -> std::process::Command {
    let src =
        format!("local kernel = require('kernel')\nlocal json = require('json')\nlocal URL = {:?}\n{body}\n", eg.url);
    let f = util::write(dir, "t.lua", &src);
    let cfg = util::write(dir, "cfg.json", &json!({"dataset_name": "x", "exec": exec}).to_string());
    let mut c = util::cellsci(dir);
    c.arg("--config")
        .arg(cfg)
        .arg("script")
        .arg(f)
        .env("CELLSCI_GATEWAY_TOKEN", &eg.token)
        .env_remove("KERNEL_USERNAME");
    c
}

/// Run a snippet against `eg` with a config whose `exec` section is `exec`.
fn lua_with(dir: &Path, eg: &Enterprise, exec: Value, body: &str) -> Output {
    let o = script(dir, eg, &exec, body).output().expect("run cellsci");
    assert!(!util::text(&o).contains(&eg.token), "the token never shows:\n{}", util::text(&o));
    o
}

/// Run a snippet that must end by printing OK.
#[track_caller]
fn passes(eg: &Enterprise, exec: Value, body: &str) -> String {
    let d = util::tempdir();
    let out = ok(&lua_with(d.path(), eg, exec, body));
    assert!(out.contains("OK"), "{out}\n{}", eg.log_tail());
    out
}

#[test]
fn enterprise_harness_pins_what_the_client_relies_on() {
    let Some(eg) = Enterprise::start() else { return };
    let (st, api) = eg.get("/api");
    assert_eq!(st, 200, "{api}");
    assert_eq!(api["gateway_version"], "3.3.0", "{api}");
    let (st, specs) = eg.get("/api/kernelspecs");
    assert_eq!(st, 200);
    let mut names: Vec<&String> = specs["kernelspecs"].as_object().unwrap().keys().collect();
    names.sort();
    // ours, and the EG venv's own ipykernel spec
    assert_eq!(names, ["python3", "python3_launcher", "python3_local", "sleeper"], "{specs}");
    assert_eq!(eg.request("GET", "/api/kernelspecs", None, None).0, 401, "no token");
    if is_root() {
        // EG_UNAUTHORIZED_USERS defaults to root: a request naming no user is refused
        let (st, body) = eg.post("/api/kernels", &json!({"name": "python3_local"}));
        assert_eq!(st, 403, "{body}");
        // said in `reason`, with an empty `message`
        assert!(body["reason"].as_str().unwrap_or_default().contains("User 'root' is not authorized"), "{body}");
    }
    // values longer than 4096 characters are refused
    let long = "x".repeat(4097);
    let (st, body) = eg
        .post("/api/kernels", &json!({"name": "python3_local", "env": {"KERNEL_USERNAME": "alice", "KERNEL_X": long}}));
    assert_eq!(st, 400, "{body}");
    // an unknown kernelspec is a 500 with NoSuchKernel, not a 404
    let (st, body) = eg.post("/api/kernels", &json!({"name": "nope", "env": {"KERNEL_USERNAME": "alice"}}));
    assert_eq!(st, 500, "{body}");
    assert!(body.to_string().contains("NoSuchKernel"), "{body}");
    // through the launcher (DistributedProcessProxy on localhost: no SSH)
    let (st, k) = eg.post("/api/kernels", &json!({"name": "python3_launcher", "env": {"KERNEL_USERNAME": "alice"}}));
    assert_eq!(st, 201, "{k}\n{}", eg.log_tail());
    let id = k["id"].as_str().unwrap().to_string();
    assert!(!eg.kernel_pids().is_empty());
    assert_eq!(eg.delete_kernel(&id), 204);
    util::wait_until("the launcher kernel to end", 30, || eg.kernel_pids().is_empty());
    // a launch that never reports back: 500 "Waited too long" after KERNEL_LAUNCH_TIMEOUT
    let (st, body) = eg.post(
        "/api/kernels",
        &json!({"name": "sleeper", "env": {"KERNEL_USERNAME": "alice", "KERNEL_LAUNCH_TIMEOUT": "3"}}),
    );
    assert_eq!(st, 500, "{body}");
    assert!(body["reason"].as_str().unwrap_or_default().contains("Waited too long"), "{body}");
    util::wait_until("EG to kill the sleeper", 30, || eg.kernel_pids().is_empty());
}

#[test]
fn enterprise_harness_launches_kernels_over_ssh_on_127_0_0_2() {
    let Some(eg) = Enterprise::start_with(EgOpts::default().ssh()) else { return };
    let user = "alice";
    let t = std::time::Instant::now();
    let (st, k) = eg.post("/api/kernels", &json!({"name": "python3_ssh", "env": {"KERNEL_USERNAME": user}}));
    eprintln!("POST /api/kernels over SSH answered in {:.2} s", t.elapsed().as_secs_f64());
    assert_eq!(st, 201, "{k}\n{}\n{}", eg.log_tail(), eg.sshd.as_ref().unwrap().log());
    let id = k["id"].as_str().unwrap().to_string();
    assert!(eg.log().contains("127.0.0.2"), "{}", eg.log_tail());
    let pids = eg.kernel_pids();
    assert!(!pids.is_empty());
    assert_eq!(eg.delete_kernel(&id), 204);
    util::wait_until("the SSH-launched kernel to end", 30, || pids.iter().all(|&p| !pid_alive(p)));
}

/// The config of the tests that are not about the user: EG (run as root here) accepts `alice`.
fn as_alice() -> Value {
    json!({"gateway_username": "alice"})
}

#[test]
fn a_kernel_through_enterprise_gateway_runs_cells_says_its_host_and_is_deleted_on_shutdown() {
    let Some(eg) = Enterprise::start() else { return };
    let out = passes(
        &eg,
        as_alice(),
        r#"
local specs = assert(kernel.specs{gateway = URL})
assert(specs[1].gateway_kind == "enterprise", json.encode(specs))
local k = assert(kernel.start{gateway = URL, name = "python3_local", env = {MY_VAR = "hello"}, startup_timeout = 40})
local r = k:execute("import os, socket\nprint(os.environ['MY_VAR'], os.environ['KERNEL_USERNAME'], os.environ['KERNEL_LAUNCH_TIMEOUT'])\nprint(socket.gethostname())\nprint(bool(os.environ.get('PATH')), bool(os.environ.get('HOME')))\n6 * 7")
assert(r.status == "ok", json.encode(r))
-- no SSH here: the host is the kernel's host name; EG gives a kernel started with an environment no
-- PATH or HOME: the set-up filled them in
assert(k:host() and r.outputs[1].text == "hello alice 40\n" .. k:host() .. "\nTrue True\n", tostring(k:host()) .. json.encode(r.outputs))
assert(r.outputs[2].data["text/plain"] == "42")
r = k:execute("import time\nprint('before', flush=True)\ntime.sleep(60)", {timeout = 1})
assert(r.status == "timeout" and r.outputs[1].text == "before\n", json.encode(r))
assert(k:execute("1").status == "ok", "the kernel survived the interrupt")
assert(k:restart())
r = k:execute("print('r' in dir(), os.environ.get('MY_VAR') if 'os' in dir() else __import__('os').environ['MY_VAR'])")
assert(r.outputs[1].text == "False hello\n", json.encode(r.outputs))
print("HOST", k:host())
k:shutdown()
print("OK")
"#,
    );
    assert!(out.contains("HOST\t"), "{out}");
    assert!(eg.kernels().is_empty(), "shutdown deleted the kernel: {:?}", eg.kernels());
    util::wait_until("the kernel's process to end", 15, || eg.kernel_pids().is_empty());
}

#[test]
fn enterprise_gateway_refusing_root_is_kind_unauthorized_naming_exec_gateway_username() {
    if !is_root() {
        eprintln!("SKIPPED: EG refuses root only, and these tests do not run as root");
        return;
    }
    let Some(eg) = Enterprise::start() else { return };
    // no gateway_username: cellsci sends the user running it, root, which EG refuses
    let out = passes(
        &eg,
        json!({}),
        r#"
local k, err = kernel.start{gateway = URL}
assert(not k and err.kind == "unauthorized", tostring(err and err.kind) .. ": " .. tostring(err))
print("MSG", err.message)
print("OK")
"#,
    );
    assert!(out.contains("'root'") && out.contains("exec.gateway_username"), "{out}");
    // the user named in the config: accepted, and the kernel knows it
    passes(
        &eg,
        json!({"gateway_username": "alice"}),
        r#"
local k = assert(kernel.start{gateway = URL})
assert(k:execute("import os; print(os.environ['KERNEL_USERNAME'])").outputs[1].text == "alice\n")
print("OK")
"#,
    );
    // an EG whose operator lets root start kernels: root is sent, and accepted
    let eg2 = Enterprise::start_with(EgOpts::default().allow_root()).unwrap();
    passes(
        &eg2,
        json!({}),
        r#"
local k = assert(kernel.start{gateway = URL})
assert(k:execute("import os; print(os.environ['KERNEL_USERNAME'])").outputs[1].text == "root\n")
print("OK")
"#,
    );
}

#[test]
fn enterprise_gateway_launch_timeout_unknown_kernelspec_and_long_values_are_what_they_are() {
    let Some(eg) = Enterprise::start() else { return };
    let out = passes(
        &eg,
        as_alice(),
        r#"
-- a kernel that never reports back: EG's KERNEL_LAUNCH_TIMEOUT is our start timeout
local t0 = os.time()
local k, err = kernel.start{gateway = URL, name = "sleeper", startup_timeout = 3}
assert(not k and err.kind == "launch_timeout", tostring(err and err.kind) .. ": " .. tostring(err))
print("LAUNCH", err.message)
k, err = kernel.start{gateway = URL, name = "no-such-spec"}
assert(not k and err.kind == "no_such_kernel", tostring(err and err.kind) .. ": " .. tostring(err))
print("NOSPEC", err.message)
-- a value EG would refuse with a 400: a config error naming the variable, nothing sent
k, err = kernel.start{gateway = URL, env = {LONG_ONE = string.rep("x", 5000)}}
assert(not k and err.kind == "config", tostring(err and err.kind) .. ": " .. tostring(err))
print("LONG", err.message)
print("OK")
"#,
    );
    assert!(
        out.contains("did not report back within its launch timeout (3 s") && out.contains("Waited too long"),
        "{out}"
    );
    assert!(out.contains("no kernelspec named 'no-such-spec'") && out.contains("python3_local"), "{out}");
    assert!(out.contains("LONG_ONE is 5000 characters long") && out.contains("4096"), "{out}");
    assert!(!eg.log().contains("LONG_ONE"), "the long value was never sent");
    util::wait_until("no kernel left", 30, || eg.kernel_pids().is_empty() && eg.kernels().is_empty());
}

#[test]
fn a_remote_kernel_killed_on_enterprise_gateway_is_dead_and_a_restart_brings_a_fresh_one() {
    let Some(eg) = Enterprise::start() else { return };
    passes(
        &eg,
        as_alice(),
        r#"
local k = assert(kernel.start{gateway = URL, name = "python3_launcher"})
k:execute("state = 1")
local r = k:execute("import os, signal\nprint('going', flush=True)\nos.kill(os.getpid(), signal.SIGKILL)")
assert(r.status == "dead", json.encode(r))
assert(not k:alive())
assert(k:restart())
r = k:execute("print('state' in dir())")
assert(r.status == "ok" and r.outputs[1].text == "False\n", json.encode(r))
print("OK")
"#,
    );
    util::wait_until("no kernel left", 30, || eg.kernel_pids().is_empty() && eg.kernels().is_empty());
}

#[test]
fn enterprise_gateway_killed_mid_cell_is_dead_and_a_restart_uses_the_restarted_gateway() {
    let Some(mut eg) = Enterprise::start() else { return };
    let d = util::tempdir();
    let marker = d.path().join("started");
    let body = r#"
local k = assert(kernel.start{gateway = URL, name = "python3_local"})
-- the pause lets 'begin' travel through EG's WebSocket before the marker says the gateway may be killed
local r = k:execute("import time\nprint('begin', flush=True)\ntime.sleep(1)\nopen('{m}', 'w').write('x')\ntime.sleep(30)")
print("STATUS", r.status, r.message)
assert(r.status == "dead", json.encode(r))
assert(r.outputs[1] and r.outputs[1].text == "begin\n", json.encode(r.outputs))
assert(k:restart())
r = k:execute("print('on the new gateway')")
assert(r.status == "ok" and r.outputs[1].text == "on the new gateway\n", json.encode(r))
print("OK")
"#
    .replace("{m}", &marker.display().to_string());
    let mut cmd = script(d.path(), &eg, &as_alice(), &body);
    let run = util::Running::start(&mut cmd);
    util::wait_until("the cell to start", 60, || marker.exists());
    eg.kill();
    eg.restart();
    let (status, out) = run.finish();
    assert!(status.success(), "{out}\n{}", eg.log_tail());
    assert!(out.contains("no longer has the kernel") || out.contains("died"), "{out}");
    assert!(out.contains("OK"), "{out}");
    util::wait_until("no kernel left", 30, || eg.kernels().is_empty());
}

#[test]
fn a_pool_spread_over_enterprise_gateway_hosts_knows_each_kernels_host_and_avoids_a_failing_one() {
    let Some(eg) = Enterprise::start_with(EgOpts::default().ssh()) else { return };
    passes(
        &eg,
        as_alice(),
        r#"
local hosts = require("hosts")
local time = require("time")
-- 127.0.0.4 has no sshd: its launches fail
local pool = assert(kernel.pool{gateway = URL, name = "python3_ssh_hosts", size = 3,
                                hosts = {"127.0.0.4", "127.0.0.2", "127.0.0.3"}})
local a, b = assert(pool:acquire()), assert(pool:acquire())
local on = {}
for _, k in ipairs({a, b}) do
  local r = k:execute("import os; print(os.environ['SSH_CONNECTION'].split()[2])")
  assert(r.status == "ok" and r.outputs[1].text == k:host() .. "\n", tostring(k:host()) .. " " .. json.encode(r))
  on[k:host()] = true
end
assert(on["127.0.0.2"] and on["127.0.0.3"], "one kernel on each good host: " .. json.encode(on))
-- the policy reads the failed launch (EG named the host) and avoids it
local policy = hosts.new{failures = 1, cooldown = 600}
local newly = {}
for _ = 1, 150 do
  newly = policy:observe(pool)
  if #newly > 0 then break end
  time.sleep(0.2)
end
assert(newly[1] == "127.0.0.4", json.encode(newly))
local listed = {}
for _, h in ipairs(pool:hosts()) do listed[h.host] = h.avoided_for end
assert(listed["127.0.0.4"] > 500 and listed["127.0.0.2"] == 0, json.encode(pool:hosts()))
-- from now on every kernel lands on the two good hosts: the failed slot started again at once
pool:release(a); pool:release(b)
local got, counts = {}, {}
for i = 1, 3 do
  got[i] = assert(pool:acquire())
  local h = got[i]:host()
  assert(h == "127.0.0.2" or h == "127.0.0.3", tostring(h))
  counts[h] = (counts[h] or 0) + 1
end
print("HOSTS", json.encode(counts))
for _, k in ipairs(got) do pool:release(k) end
pool:shutdown()
print("OK")
"#,
    );
    util::wait_until("EG's kernels to be deleted", 60, || eg.kernels().is_empty());
    util::wait_until("no kernel process left on either host", 60, || eg.kernel_pids().is_empty());
}

#[test]
fn a_websocket_dropped_during_a_20_mb_output_on_enterprise_gateway_reconnects_and_the_output_arrives_whole() {
    let Some(eg) = Enterprise::start() else { return };
    let proxy = crate::gateway::CutProxy::start(eg.port);
    let d = util::tempdir();
    let marker = d.path().join("half");
    // EG 3.3 has no IOPub rate limit (its settings carry none): 20 MB come through whole
    let body = r#"
local k = assert(kernel.start{gateway = URL, name = "python3_local"})
local r = k:execute("import sys, time\nfor i in range(10):\n    sys.stdout.write(str(i % 10) * 1000000)\nsys.stdout.flush()\nopen('{m}', 'w').write('x')\ntime.sleep(3)\nfor i in range(10, 20):\n    sys.stdout.write(str(i % 10) * 1000000)\nsys.stdout.flush()\n'done'", {max_output_bytes = 0})
local text = ""
for _, o in ipairs(r.outputs) do if o.name == "stdout" then text = text .. o.text end end
print("STATUS", r.status, #text)
assert(r.status == "ok", json.encode(r.status) .. tostring(r.evalue))
assert(#text == 20000000 and text:sub(-1) == "9", "all 20 MB, in order: " .. #text)
assert(r.outputs[#r.outputs].data["text/plain"] == "'done'")
print("OK")
"#
    .replace("URL", &format!("{:?}", proxy.url))
    .replace("{m}", &marker.display().to_string());
    let mut cmd = script(d.path(), &eg, &as_alice(), &body);
    let run = util::Running::start(&mut cmd);
    util::wait_until("the first 10 MB", 120, || marker.exists());
    std::thread::sleep(std::time::Duration::from_secs(1));
    proxy.cut();
    let (status, out) = run.finish();
    assert!(status.success(), "{out}\n{}", eg.log_tail());
    assert!(out.contains("reconnecting"), "the drop is reported:\n{out}");
    assert!(out.contains("OK"), "{out}");
    util::wait_until("the kernel deleted", 30, || eg.kernels().is_empty());
}

#[test]
fn notebook_run_executes_a_notebook_on_an_enterprise_gateway_kernel() {
    let Some(eg) = Enterprise::start() else { return };
    let d = util::tempdir();
    let nb = json!({
        "cells": [
            {"cell_type": "code", "execution_count": null, "id": "a", "metadata": {}, "outputs": [],
             "source": "import os\nprint(os.getppid(), os.environ['KERNEL_USERNAME'])"},
            {"cell_type": "code", "execution_count": null, "id": "b", "metadata": {}, "outputs": [],
             "source": "21 * 2"}
        ],
        "metadata": {"kernelspec": {"name": "python3_local", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5
    });
    let input = util::write(d.path(), "nb.ipynb", &nb.to_string());
    // no config here: the user comes from KERNEL_USERNAME, as Jupyter's own gateway client takes it
    let o = util::cellsci(d.path())
        .args(["notebook", "run", "--gateway", &eg.url])
        .arg(&input)
        .env("CELLSCI_GATEWAY_TOKEN", &eg.token)
        .env("KERNEL_USERNAME", "alice")
        .output()
        .unwrap();
    let out = ok(&o);
    assert!(!out.contains(&eg.token));
    let done: Value = serde_json::from_str(&std::fs::read_to_string(d.path().join("nb.out.ipynb")).unwrap()).unwrap();
    let text = |v: &Value| match v {
        Value::Array(parts) => parts.iter().filter_map(Value::as_str).collect::<String>(),
        v => v.as_str().unwrap_or_default().to_string(),
    };
    let first = text(&done["cells"][0]["outputs"][0]["text"]);
    assert_eq!(first.trim(), format!("{} alice", eg.pid().unwrap()), "a child of EG, for alice: {out}");
    assert_eq!(text(&done["cells"][1]["outputs"][0]["data"]["text/plain"]), "42");
    util::wait_until("the kernel deleted at the end", 30, || eg.kernels().is_empty());
}

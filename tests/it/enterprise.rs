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

/// The Lua snippet's prelude: `kernel`, `json`, `URL` (EG).
fn script(dir: &Path, url: &str, body: &str) -> std::process::Command {
    let src = format!("local kernel = require('kernel')\nlocal json = require('json')\nlocal URL = {url:?}\n{body}\n");
    let f = util::write(dir, "t.lua", &src);
    let mut c = util::cellsci(dir);
    c.arg("script").arg(f);
    c
}

/// Run a snippet against `eg` with its token in CELLSCI_GATEWAY_TOKEN, a config in `dir` (`exec`).
fn lua_with(dir: &Path, eg: &Enterprise, exec: Value, body: &str) -> Output {
    let cfg = util::write(dir, "cfg.json", &json!({"dataset_name": "x", "exec": exec}).to_string());
    let o = script(dir, &eg.url, body)
        .arg("--config")
        .arg(cfg)
        .env("CELLSCI_GATEWAY_TOKEN", &eg.token)
        .output()
        .expect("run cellsci");
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
    let (st, body) =
        eg.post("/api/kernels", &json!({"name": "python3_local", "env": {"KERNEL_USERNAME": "alice", "KERNEL_X": long}}));
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
    let (st, k) = eg.post("/api/kernels", &json!({"name": "python3_ssh", "env": {"KERNEL_USERNAME": user}}));
    assert_eq!(st, 201, "{k}\n{}\n{}", eg.log_tail(), eg.sshd.as_ref().unwrap().log());
    let id = k["id"].as_str().unwrap().to_string();
    assert!(eg.log().contains("127.0.0.2"), "{}", eg.log_tail());
    let pids = eg.kernel_pids();
    assert!(!pids.is_empty());
    assert_eq!(eg.delete_kernel(&id), 204);
    util::wait_until("the SSH-launched kernel to end", 30, || pids.iter().all(|&p| !pid_alive(p)));
}

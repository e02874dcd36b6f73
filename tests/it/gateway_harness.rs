//! The harness around a real Jupyter Kernel Gateway (`util::gateway`), and the gateway behaviours that
//! cellsci's gateway kernels rely on (kernel_gateway 3.0.1 from the test venv), pinned as observed.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::util::gateway::{pid_alive, Gateway, GatewayOpts};
use crate::util::{self, wait_until};

/// The kernel processes of `g`, once there is at least one.
#[track_caller]
fn wait_kernel_pids(g: &Gateway) -> Vec<i32> {
    wait_until("a kernel process", 30, || !g.kernel_pids().is_empty());
    g.kernel_pids()
}

#[test]
fn gateway_harness_rest_lifecycle_of_a_kernel() {
    let g = Gateway::start();
    assert!(g.url.starts_with("http://127.0.0.1:") && g.url.ends_with(&g.port.to_string()), "{}", g.url);
    assert_eq!(g.token.len(), 32);
    assert!(g.token.chars().all(|c| c.is_ascii_hexdigit()), "{}", g.token);

    // The venv's own python3 spec (the temp JUPYTER_DATA_DIR hides the user's), and only it.
    let (st, specs) = g.get("/api/kernelspecs");
    assert_eq!(st, 200);
    assert_eq!(specs["default"], "python3", "{specs}");
    let names: Vec<&String> = specs["kernelspecs"].as_object().expect("kernelspecs").keys().collect();
    assert_eq!(names, ["python3"], "{specs}");
    assert_eq!(specs["kernelspecs"]["python3"]["spec"]["language"], "python", "{specs}");

    // A wrong token and no token are both 401 (not 403), with a JSON body.
    let (st, body) = g.request("GET", "/api/kernelspecs", Some("0123456789abcdef0123456789abcdef"), None);
    assert_eq!(st, 401, "wrong token: {body}");
    assert_eq!(body["reason"], "Unauthorized", "{body}");
    let (st, body) = g.request("GET", "/api/kernelspecs", None, None);
    assert_eq!(st, 401, "no token: {body}");
    // The token as a query parameter works too.
    assert_eq!(g.request("GET", &format!("/api/kernelspecs?token={}", g.token), None, None).0, 200);

    // Start: 201 with the model; the kernel is a process of the venv's python, its connection file in our
    // runtime dir.
    let t = Instant::now();
    let (st, k) = g.post("/api/kernels", &json!({"name": "python3"}));
    let start_s = t.elapsed().as_secs_f64();
    assert_eq!(st, 201, "{k}\n{}", g.log());
    let id = k["id"].as_str().expect("an id").to_string();
    assert_eq!(k["name"], "python3", "{k}");
    eprintln!("POST /api/kernels answered in {start_s:.2} s with {k}");
    let pids = wait_kernel_pids(&g);
    assert_eq!(pids.len(), 1, "{pids:?}");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", pids[0])).unwrap();
    let argv: Vec<String> = cmdline.split(|&b| b == 0).map(|s| String::from_utf8_lossy(s).into_owned()).collect();
    let venv = util::test_venv().display().to_string();
    assert!(argv[0].starts_with(&venv), "the kernel runs {argv:?}, not the python of {venv}");
    assert!(argv.iter().any(|a| a.ends_with(&format!("kernel-{id}.json"))), "{argv:?}");

    let (st, m) = g.get(&format!("/api/kernels/{id}"));
    assert_eq!(st, 200, "{m}");
    let state = m["execution_state"].as_str().expect("execution_state");
    assert!(["starting", "idle", "busy"].contains(&state), "{m}");
    eprintln!("GET /api/kernels/<id> right after the start: {m}");
    // The POST answers before the kernel is ready ("starting"), and with no WebSocket client the model
    // stays "starting" (observed: still so after 30 s): readiness must come from the channels (kernel_info),
    // not from polling this field. Checked here for 2 s.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let (st, m) = g.get(&format!("/api/kernels/{id}"));
        assert_eq!((st, m["execution_state"].as_str()), (200, Some("starting")), "{m}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // list_kernels=True: GET /api/kernels lists it.
    let listed = g.kernels();
    let ids: Vec<&str> = listed.iter().map(|k| k["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [id.as_str()]);

    assert_eq!(g.delete_kernel(&id), 204);
    let (st, m) = g.get(&format!("/api/kernels/{id}"));
    assert_eq!(st, 404, "{m}");
    assert!(g.kernels().is_empty());
    assert_eq!(g.delete_kernel(&id), 404, "a second DELETE");
    // The DELETE ends the process too.
    wait_until("the deleted kernel's process to end", 15, || !pid_alive(pids[0]));
    assert!(g.kernel_pids().is_empty());
}

#[test]
fn gateway_harness_kill_orphans_kernels_and_restart_forgets_them() {
    let mut g = Gateway::start_with(GatewayOpts::default().orphan_kernelspec());
    // A plain ipykernel, and one without its parent poller (a kernel that really outlives its gateway).
    let plain = g.start_kernel();
    wait_until("the plain kernel's process", 30, || g.kernel_pids().len() == 1);
    let plain_pid = g.kernel_pids()[0];
    let orphan = g.start_kernel_named("python3-orphan");
    wait_until("the orphan kernel's process", 30, || g.kernel_pids().len() == 2);
    let orphan_pid = *g.kernel_pids().iter().find(|&&p| p != plain_pid).unwrap();
    let gw = g.pid().expect("the gateway's pid");

    // A crashed gateway: its kernels outlive it (new sessions, reparented); nothing answers on the port.
    g.kill();
    let killed = Instant::now();
    assert!(!pid_alive(gw));
    assert!(pid_alive(orphan_pid), "the orphan kernel died with the gateway");
    assert_eq!(g.get("/api/kernelspecs").0, 0, "something still answers on {}", g.url);
    // ipykernel's ParentPollerUnix notices the new parent and exits by itself.
    wait_until("the plain ipykernel to exit after its gateway", 10, || !pid_alive(plain_pid));
    eprintln!("the plain ipykernel exited {:.1} s after its gateway was killed", killed.elapsed().as_secs_f64());

    // Same port, same token: the new gateway does not know the old kernels (nor adopt the process).
    let port = g.port;
    g.restart();
    assert_eq!(g.port, port);
    assert_eq!(g.url, format!("http://127.0.0.1:{port}"));
    for id in [&plain, &orphan] {
        let (st, m) = g.get(&format!("/api/kernels/{id}"));
        assert_eq!(st, 404, "{m}");
        assert_eq!(g.delete_kernel(id), 404);
    }
    assert!(g.kernels().is_empty());
    assert!(pid_alive(orphan_pid), "the orphan ended at the restart");
    assert_eq!(g.kernel_pids(), [orphan_pid], "the orphan is found by its runtime dir");
    // The restarted gateway starts kernels again.
    let id2 = g.start_kernel();
    assert!(id2 != plain && id2 != orphan);
    wait_until("the new kernel's process", 30, || g.kernel_pids().len() == 2);
    let all = g.kernel_pids();

    // Drop: nothing is left running, the orphan included.
    drop(g);
    for p in all {
        assert!(!pid_alive(p), "kernel {p} still runs after the drop");
    }
}

#[test]
fn gateway_harness_kill_then_drop_leaves_no_orphan() {
    let mut g = Gateway::start_with(GatewayOpts::default().orphan_kernelspec());
    g.start_kernel_named("python3-orphan");
    let pids = wait_kernel_pids(&g);
    g.kill();
    assert!(pids.iter().all(|&p| pid_alive(p)));
    drop(g);
    assert!(pids.iter().all(|&p| !pid_alive(p)), "{pids:?} still run");
}

#[test]
fn gateway_harness_list_kernels_is_forbidden_without_the_option() {
    let g = Gateway::start_with(GatewayOpts::default().arg("--JupyterWebsocketPersonality.list_kernels=False"));
    let (st, body) = g.get("/api/kernels");
    assert_eq!(st, 403, "{body}");
}

#[test]
fn gateway_harness_idle_culler_deletes_an_idle_kernel() {
    let g = Gateway::start_with(GatewayOpts::default().culler(3, 1));
    let id = g.start_kernel();
    let t = Instant::now();
    let pids = wait_kernel_pids(&g);
    let deadline = t + Duration::from_secs(15);
    loop {
        let (st, m) = g.get(&format!("/api/kernels/{id}"));
        if st == 404 {
            break;
        }
        assert_eq!(st, 200, "{m}");
        assert!(Instant::now() < deadline, "not culled within 15 s: {m}\n{}", g.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let culled = t.elapsed().as_secs_f64();
    eprintln!("culled after {culled:.1} s (cull_idle_timeout=3, cull_interval=1)");
    // Not before the idle timeout, and within a few passes after it.
    assert!((3.0..8.0).contains(&culled), "culled after {culled:.1} s");
    assert!(g.log().contains("Culling kernel"), "{}", g.log());
    wait_until("the culled kernel's process to end", 15, || pids.iter().all(|&p| !pid_alive(p)));
}

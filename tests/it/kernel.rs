//! Tests for the kernel area: a real ipykernel from the test venv (`util::test_venv()`), driven from Lua
//! scripts through `cellsci script`; the assertions live in the Lua snippets.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::util::{self, ok};

pub fn python() -> PathBuf {
    util::test_venv().join("bin/python")
}

/// Run a Lua snippet with `PY` bound to the test venv's interpreter.
pub fn lua(dir: &Path, body: &str) -> Output {
    let script = format!(
        "local kernel = require('kernel')\nlocal notebook = require('notebook')\nlocal PY = {:?}\n{body}\n",
        python().display().to_string()
    );
    let f = util::write(dir, "t.lua", &script);
    util::cellsci(dir).arg("script").arg(f).output().expect("run cellsci")
}

/// nbformat's own validator on a file (from the test venv).
#[track_caller]
pub fn validate(nb: &Path) {
    let o = std::process::Command::new(python())
        .args(["-c", "import nbformat,sys; nbformat.validate(nbformat.read(sys.argv[1], as_version=nbformat.NO_CONVERT)); print('valid')"])
        .arg(nb)
        .output()
        .unwrap();
    assert!(o.status.success(), "nbformat rejects {}: {}", nb.display(), util::text(&o));
}

fn pid_alive(pid: i32) -> bool {
    // A zombie still answers kill(0); look at its state too.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty() && !stat.contains(") Z ")
}

#[test]
fn outputs_of_every_type_are_built_like_nbclient() {
    let d = util::tempdir();
    let o = lua(
        d.path(),
        r#"
local k = assert(kernel.start{python = PY})
local r = k:execute([[
import sys
from IPython.display import display, HTML, Image, update_display, clear_output, JSON
print("a", end=""); sys.stdout.flush()
print("b"); sys.stdout.flush()
print("warn", file=sys.stderr); sys.stderr.flush()
print("c"); sys.stdout.flush()
for i in range(3):
    print(f"\r{i*50}%", end=""); sys.stdout.flush()
print()
display(HTML("<b>ünïcödé ✓</b>"))
display(JSON({"k": [1, 2]}))
png = b"\x89PNG\r\n\x1a\n" + bytes(20)
display(Image(data=png, format="png"), display_id="img")
display(HTML("<i>old</i>"), display_id="upd")
update_display(HTML("<i>new</i>"), display_id="upd")
"日本語 ✓"
]])
assert(r.status == "ok", r.status)
assert(r.execution_count == 1)
local o = r.outputs
local types = {}
for i, x in ipairs(o) do types[i] = x.output_type .. (x.name and (":" .. x.name) or "") end
local got = table.concat(types, ",")
assert(got == "stream:stdout,stream:stderr,stream:stdout,display_data,display_data,display_data,display_data,execute_result", got)
assert(o[1].text == "ab\n", o[1].text)
assert(o[3].text == "c\n100%\n", ("%q"):format(o[3].text))
assert(o[4].data["text/html"] == "<b>ünïcödé ✓</b>")
assert(o[5].data["application/json"].k[2] == 2)
assert(o[6].data["image/png"] ~= nil)
assert(o[7].data["text/html"] == "<i>new</i>", o[7].data["text/html"])
assert(o[8].execution_count == 1 and o[8].data["text/plain"] == "'日本語 ✓'", o[8].data["text/plain"])
assert(r.timing["shell.execute_reply"] and r.timing["iopub.status.idle"])
assert(type(r.duration) == "number")

local seen = {}
local live = k:execute("print('p1', flush=True)\nprint('p2', flush=True)\n7", {on_output = function(o, kind)
  seen[#seen + 1] = kind .. ":" .. (o.text or (o.data and o.data["text/plain"]) or "")
end})
assert(live.status == "ok")
local joined = table.concat(seen, "|")
assert(joined:find("stream:p1") and joined:find("execute_result:7"), joined)
assert(live.outputs[1].text == "p1\np2\n", "pieces were merged in the result")

local r2 = k:execute([[
from IPython.display import clear_output
print("gone")
clear_output(wait=True)
print("kept")
]])
assert(#r2.outputs == 1 and r2.outputs[1].text == "kept\n", r2.outputs[1].text)

local e = k:execute("def f():\n    raise ValueError('bad ✗')\nf()")
assert(e.status == "error" and e.ename == "ValueError" and e.evalue == "bad ✗")
assert(not e.traceback:find("\27"), "traceback for scripts has no ANSI codes")
assert(e.traceback:find("ValueError: bad ✗", 1, true), e.traceback)
local tb = e.outputs[#e.outputs].traceback
assert(table.concat(tb, "\n"):find("\27%["), "the notebook keeps the coloured traceback")

local nb = notebook.new()
nb:push("print('x')")
nb:push({cell_type = "code", source = "err"})
nb:set_outputs(1, r)
nb:set_outputs(2, e)
assert(nb:cell(1).execution_count == 1)
assert(nb:cell(1).metadata.execution["shell.execute_reply"])
assert(nb:write("out.ipynb"))
k:shutdown()
assert(not k:alive())
"#,
    );
    ok(&o);
    validate(&d.path().join("out.ipynb"));
}

#[test]
fn large_display_and_stream_outputs_are_kept_whole() {
    let d = util::tempdir();
    let o = lua(
        d.path(),
        r#"
local k = assert(kernel.start{python = PY})
local r = k:execute([[
import base64, os
from IPython.display import display
data = base64.b64encode(os.urandom(15_000_000)).decode()
display({"image/png": data}, raw=True)
len(data)
]])
assert(r.status == "ok", r.status)
local n = tonumber(r.outputs[2].data["text/plain"])
assert(n == 20000000, n)
assert(#r.outputs[1].data["image/png"] == n)
local nb = notebook.new()
nb:push("x")
nb:set_outputs(1, r)
assert(nb:write("big.ipynb"))
r = nil
collectgarbage()

local s = k:execute("for i in range(400000):\n    print(i)")
assert(s.status == "ok")
assert(#s.outputs == 1, #s.outputs)
local lines = 0
for _ in s.outputs[1].text:gmatch("\n") do lines = lines + 1 end
assert(lines == 400000, lines)
assert(s.outputs[1].text:sub(-7) == "399999\n")
k:shutdown()
"#,
    );
    ok(&o);
    assert!(std::fs::metadata(d.path().join("big.ipynb")).unwrap().len() > 20_000_000);
}

#[test]
fn sys_exit_is_an_error_and_input_fails_fast() {
    let d = util::tempdir();
    let o = lua(
        d.path(),
        r#"
local k = assert(kernel.start{python = PY})
-- silent set-up code (what the pipeline runs first) takes no execution count
local g = k:execute("hidden = 1\nhidden", {silent = true})
assert(g.status == "ok" and #g.outputs == 0, #g.outputs)
local r = k:execute("import sys\nsys.exit(3)")
assert(r.execution_count == 1, r.execution_count)
assert(r.status == "error" and r.ename == "SystemExit", r.ename)
local i = k:execute("name = input('who? ')", {timeout = 60})
assert(i.status == "error" and i.ename == "StdinNotImplementedError", i.ename)
assert(k:alive())
assert(k:execute("1").status == "ok")
k:shutdown()
"#,
    );
    ok(&o);
}

#[test]
fn timeout_interrupts_keeps_partial_outputs_and_the_kernel_recovers() {
    let d = util::tempdir();
    let o = lua(
        d.path(),
        r#"
local k = assert(kernel.start{python = PY, interrupt_grace = 1})
assert(k:execute("state = 42").status == "ok")
local r = k:execute("import time\nprint('before', flush=True)\ntime.sleep(60)", {timeout = 1})
assert(r.status == "timeout", r.status)
assert(r.outputs[1].text == "before\n", "partial output kept")
assert(r.restarted == false)
assert(r.message:find("interrupted"), r.message)
-- the interrupt worked: the kernel and its state survive
local s = k:execute("state")
assert(s.status == "ok" and s.outputs[1].data["text/plain"] == "42")

-- a cell that ignores SIGINT: killed after the grace, the kernel is restarted
local r2 = k:execute("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('stuck', flush=True)\ntime.sleep(60)", {timeout = 1})
assert(r2.status == "timeout" and r2.restarted == true, r2.status)
assert(r2.outputs[1].text == "stuck\n")
assert(k:alive())
local s2 = k:execute("'state' in globals()")
assert(s2.status == "ok" and s2.outputs[1].data["text/plain"] == "False", "fresh kernel after the restart")
k:shutdown()
"#,
    );
    ok(&o);
}

#[test]
fn os_exit_is_detected_and_restart_gives_a_fresh_kernel() {
    let d = util::tempdir();
    let o = lua(
        d.path(),
        r#"
local k = assert(kernel.start{python = PY})
assert(k:execute("x = 1").status == "ok")
local r = k:execute("print('bye', flush=True)\nimport os\nos._exit(7)")
assert(r.status == "dead", r.status)
assert(r.exit_code == 7, r.exit_code)
assert(r.message:find("exited with code 7"), r.message)
assert(not k:alive())
local again = k:execute("1")
assert(again.status == "dead")
assert(k:restart())
assert(k:alive())
local s = k:execute("'x' in globals()")
assert(s.outputs[1].data["text/plain"] == "False")
k:shutdown()
"#,
    );
    ok(&o);
}

#[test]
fn sigkill_of_the_kernel_is_reported_as_likely_oom() {
    let d = util::tempdir();
    let o = lua(
        d.path(),
        r#"
local k = assert(kernel.start{python = PY})
local r = k:execute("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
assert(r.status == "dead", r.status)
assert(r.signal == 9 and r.likely_oom == true)
assert(r.message:find("SIGKILL") and r.message:find("out of memory"), r.message)
assert(k:restart())
assert(k:execute("1+1").outputs[1].data["text/plain"] == "2")
k:shutdown()
"#,
    );
    ok(&o);
}

#[test]
fn ctrl_c_of_cellsci_leaves_no_kernel_process() {
    let d = util::tempdir();
    let script = format!(
        r#"local kernel = require('kernel')
local k = assert(kernel.start{{python = {:?}}})
print('PID ' .. k:pid())
local r = assert(k:execute('import time\nprint("running", flush=True)\ntime.sleep(120)', {{on_output = function(o)
  print("CELL " .. o.text); io.stdout:flush()
end}}))
"#,
        python().display().to_string()
    );
    let f = util::write(d.path(), "c.lua", &script);
    let mut host = util::Running::start(util::cellsci(d.path()).arg("script").arg(f));
    let line = host.wait_for("PID ");
    let pid: i32 = line.trim().strip_prefix("PID ").expect("kernel pid line").parse().unwrap();
    host.wait_for("CELL running");
    host.signal(libc::SIGINT);
    let (st, out) = host.finish();
    assert_eq!(st.code(), Some(130), "exit code after Ctrl-C:\n{out}");
    // SIGKILL is asynchronous: the kernel leaves the process table a moment later.
    util::wait_until(&format!("kernel {pid} to end with cellsci"), 2, || !pid_alive(pid));
}

#[test]
fn kernelspecs_are_found_on_jupyter_path_with_python_resolved() {
    let d = util::tempdir();
    let spec = d.path().join("jp/kernels/mykernel");
    std::fs::create_dir_all(&spec).unwrap();
    std::fs::write(
        spec.join("kernel.json"),
        r#"{"argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"], "display_name": "Mine",
            "language": "python", "env": {"FROM_SPEC": "yes"}}"#,
    )
    .unwrap();
    let msg = d.path().join("jp/kernels/msgkernel");
    std::fs::create_dir_all(&msg).unwrap();
    std::fs::write(
        msg.join("kernel.json"),
        r#"{"argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"], "display_name": "Msg",
            "language": "python", "interrupt_mode": "message"}"#,
    )
    .unwrap();
    std::fs::create_dir_all(d.path().join("work")).unwrap();
    let script = r#"
local kernel = require('kernel')
local found
for _, s in ipairs(kernel.specs()) do if s.name == "mykernel" then found = s end end
assert(found, "mykernel listed")
assert(found.display_name == "Mine")
assert(found.argv[1] == os.getenv("VIRTUAL_ENV") .. "/bin/python", found.argv[1])
local k = assert(kernel.start{name = "mykernel", cwd = "work", env = {FROM_SCRIPT = "1"}})
local r = k:execute("import os\nprint(os.environ['FROM_SPEC'], os.environ['FROM_SCRIPT'], os.path.basename(os.getcwd()))")
assert(r.outputs[1].text == "yes 1 work\n", r.outputs[1].text)
k:shutdown()
-- a spec that asks for interrupts by message (control channel), not by signal
local m = assert(kernel.start{name = "msgkernel"})
local t = m:execute("import time\nprint('x', flush=True)\ntime.sleep(60)", {timeout = 1})
assert(t.status == "timeout" and t.restarted == false, t.status)
assert(m:execute("1").status == "ok")
m:shutdown()
local none, err = kernel.start{name = "no-such-kernel"}
assert(none == nil and err.kind == "start" and err.message:find("no%-such%-kernel"), tostring(err))
local bad, err2 = kernel.start{python = "/nonexistent/python"}
assert(bad == nil and err2.kind == "start", tostring(err2))
"#;
    let f = util::write(d.path(), "s.lua", script);
    let o = util::cellsci(d.path())
        .arg("script")
        .arg(f)
        .env("JUPYTER_PATH", d.path().join("jp"))
        .env("VIRTUAL_ENV", util::test_venv())
        .output()
        .unwrap();
    ok(&o);
}

#[test]
fn provisioning_without_python_says_so() {
    let d = util::tempdir();
    let empty = d.path().join("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    let f = util::write(
        d.path(),
        "p.lua",
        r#"
local kernel = require('kernel')
local k, err = kernel.start{packages = {"numpy"}}
assert(k == nil and err.kind == "start", tostring(err))
assert(err.message:find("Python is not installed"), err.message)
"#,
    );
    let o = util::cellsci(d.path())
        .arg("script")
        .arg(f)
        .env("PATH", &empty)
        .env("HOME", d.path())
        .env_remove("VIRTUAL_ENV")
        .env("CELLSCI_CACHE_DIR", d.path().join("cache"))
        .output()
        .unwrap();
    ok(&o);
}

/// Regression: `k:execute(code, {timeout = 1e20})` panicked converting the seconds to a Duration (the
/// process aborted with exit 101, no error table, no file:line).
#[test]
fn huge_timeout_values_do_not_panic() {
    let d = crate::util::tempdir();
    let out = lua(
        d.path(),
        r#"local k = assert(kernel.start{python = PY, startup_timeout = 1e20})
local r = k:execute("x = 1 + 1", {timeout = 1e20})
assert(r.status == "ok", r.status)
k:shutdown()
print("huge ok")"#,
    );
    let t = crate::util::text(&out);
    assert!(out.status.success() && t.contains("huge ok"), "{t}");
}

/// Regression: `k:pid()` was nil while a cell ran (it read the kernel, which the running cell holds),
/// and still named the dead process after the kernel died.
#[test]
fn pid_is_known_while_a_cell_runs_and_nil_once_dead() {
    let d = crate::util::tempdir();
    let out = lua(
        d.path(),
        r#"local k = assert(kernel.start{python = PY})
local before = k:pid()
assert(math.type(before) == "integer", tostring(before))
local during
local r = k:execute("print('x')", {on_output = function() during = k:pid() end})
assert(r.status == "ok", r.status)
assert(during == before, "pid while running: " .. tostring(during))
r = k:execute("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
assert(r.status == "dead", r.status)
assert(k:pid() == nil, "pid after death: " .. tostring(k:pid()))
assert(k:restart())
assert(math.type(k:pid()) == "integer" and k:pid() ~= before)
k:shutdown()
assert(k:pid() == nil)
print("pid ok")"#,
    );
    assert!(ok(&out).contains("pid ok"));
}

/// Regression: a cell whose execute_reply arrived but whose iopub `idle` status never did (a dropped
/// iopub message) was waited for until the cell timeout, or forever without one.
#[test]
fn a_lost_idle_status_does_not_hang_the_cell() {
    let d = crate::util::tempdir();
    let out = lua(
        d.path(),
        r#"local k = assert(kernel.start{python = PY})
-- from now on the kernel never says "idle" (this cell included)
local r = k:execute([[
k = get_ipython().kernel
_orig = k._publish_status
def _no_idle(status, channel, parent=None):
    if status != "idle":
        _orig(status, channel, parent)
k._publish_status = _no_idle
print("patched")]], {timeout = false})
assert(r.status == "ok", r.status .. " " .. tostring(r.message))
assert(r.outputs[1].text == "patched\n", r.outputs[1].text)
r = k:execute("1 + 1", {timeout = false})
assert(r.status == "ok" and r.outputs[1].data["text/plain"] == "2", r.status)
k:shutdown()
print("no hang")"#,
    );
    assert!(ok(&out).contains("no hang"));
}

/// Regression: Ctrl-C during a cell discarded everything the cell had printed (k:execute gave only
/// `nil, err`), so the saved notebook lost the output of the cell that was running.
#[test]
fn ctrl_c_during_a_cell_keeps_its_outputs_in_err_result() {
    let d = util::tempdir();
    let script = format!(
        r#"local kernel = require('kernel')
local k = assert(kernel.start{{python = {:?}}})
local r, err = k:execute("import time\nprint('before', flush=True)\ntime.sleep(60)", {{on_output = function(o)
  print("GOT " .. o.text:gsub("\n", ""))
  io.stdout:flush()
end}})
print("RESULT", r, err and err.kind, err and err.result and err.result.outputs[1].text)
"#,
        python().display().to_string()
    );
    let f = util::write(d.path(), "c.lua", &script);
    let mut host = util::Running::start(util::cellsci(d.path()).arg("script").arg(f));
    host.wait_for("GOT before");
    host.signal(libc::SIGINT);
    let (_, out) = host.finish();
    assert!(out.contains("RESULT\tnil\tinterrupted\tbefore\n"), "{out}");
}

/// Processes a test started through a kernel: killed when the test ends, passed or failed, so a
/// failing test leaves nothing running.
struct KillOnDrop(Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &p in self.0.iter().filter(|&&p| pid_alive(p)) {
            // SAFETY: kill(2) of a process this test's kernel started.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
}

/// The whitespace-separated pids a cell wrote to `path` (a line ending in a newline), once there are `n`.
fn read_pids(path: &Path, n: usize) -> KillOnDrop {
    let read = || -> Vec<i32> {
        let s = std::fs::read_to_string(path).unwrap_or_default();
        if !s.ends_with('\n') {
            return Vec::new();
        }
        s.split_whitespace().filter_map(|x| x.parse().ok()).collect()
    };
    util::wait_until(&format!("{n} pids in {}", path.display()), 90, || read().len() == n);
    KillOnDrop(read())
}

/// Whether a process is inside `sleep(3)`-like C call (its main thread waits in nanosleep).
fn in_nanosleep(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/wchan")).is_ok_and(|w| w.contains("nanosleep"))
}

fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit_once(") ").unwrap().1.split_whitespace().nth(19).unwrap().parse().unwrap()
}

/// Regression (issue 10): the kernel folder was 0755 and connection.json, which holds the HMAC key that
/// lets its reader run code in the kernel, 0644; and every killed run left its folder behind for good.
#[test]
fn kernel_signing_key_is_private_and_dead_runs_folders_are_removed() {
    let d = util::tempdir();
    let tmp = std::env::temp_dir();
    // a folder of a run that is gone (a pid that has exited), and one of a live run (this test)
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    let stale = tmp.join(format!("cellsci-kernel-{gone_pid}-12345-test{}", std::process::id()));
    let me = std::process::id();
    let live = tmp.join(format!("cellsci-kernel-{me}-{}-test", start_time(me)));
    for f in [&stale, &live] {
        std::fs::create_dir_all(f).unwrap();
        std::fs::write(f.join("connection.json"), "{}").unwrap();
        // the IPC channels a killed run's kernel left bound
        drop(std::os::unix::net::UnixListener::bind(f.join("k-1")).unwrap());
    }
    let o = lua(
        d.path(),
        r#"local k = assert(kernel.start{python = PY})
local r = k:execute([[
import os
from ipykernel.kernelapp import IPKernelApp
cf = IPKernelApp.instance().connection_file
print(oct(os.stat(os.path.dirname(cf)).st_mode & 0o777), oct(os.stat(cf).st_mode & 0o777))]])
assert(r.status == "ok", r.status)
print("MODES " .. r.outputs[1].text)
k:shutdown()"#,
    );
    let t = ok(&o);
    let stale_left = stale.exists();
    let live_left = live.exists();
    let _ = std::fs::remove_dir_all(&stale);
    let _ = std::fs::remove_dir_all(&live);
    assert!(t.contains("MODES 0o700 0o600"), "{t}");
    assert!(!stale_left, "the folder of a dead run was kept");
    assert!(live_left, "the folder of a live run was removed");
}

/// Regression (issue 10): OPENAI_API_KEY (and the configured key under any name) reached the kernel,
/// so a generated cell that printed the environment wrote the key into the archived notebook.
#[test]
fn llm_secrets_do_not_reach_the_kernel_environment() {
    let d = util::tempdir();
    util::write(d.path(), "cfg.json", r#"{"llm": {"api_key": "cfg-secret-key-5678"}}"#);
    let script = format!(
        r#"local kernel = require('kernel')
local k = assert(kernel.start{{python = {:?}, env = {{FROM_SCRIPT = "kept"}}}})
local r = k:execute([[
import os
for n in ["OPENAI_API_KEY", "COPY_OF_ENV_KEY", "COPY_OF_CFG_KEY", "CELLSCI_GATEWAY_TOKEN", "JUPYTER_GATEWAY_TOKEN", "HARMLESS", "FROM_SCRIPT"]:
    print(n, os.environ.get(n))]])
assert(r.status == "ok", r.status)
io.write(r.outputs[1].text)
k:shutdown()"#,
        python().display().to_string()
    );
    let f = util::write(d.path(), "s.lua", &script);
    let o = util::cellsci(d.path())
        .args(["--config", "cfg.json", "script"])
        .arg(f)
        .env("OPENAI_API_KEY", "sk-env-secret-1234")
        .env("COPY_OF_ENV_KEY", "sk-env-secret-1234")
        .env("COPY_OF_CFG_KEY", "cfg-secret-key-5678")
        .env("CELLSCI_GATEWAY_TOKEN", "gw-token-abcdefgh")
        .env("JUPYTER_GATEWAY_TOKEN", "gw-token-2-abcdefgh")
        .env("HARMLESS", "1")
        .output()
        .unwrap();
    let t = ok(&o);
    for line in [
        "OPENAI_API_KEY None",
        "COPY_OF_ENV_KEY None",
        "COPY_OF_CFG_KEY None",
        "CELLSCI_GATEWAY_TOKEN None",
        "JUPYTER_GATEWAY_TOKEN None",
        "HARMLESS 1",
        "FROM_SCRIPT kept",
    ] {
        assert!(t.contains(line), "expected {line:?} in:\n{t}");
    }
    assert!(!t.contains("secret"), "{t}");
}

/// Regression (issue 10): a message holding a lone surrogate did not decode and was dropped, so
/// `raise ValueError('bad \udcfe')` never got its reply (the cell hung until the timeout and the kernel
/// was restarted) and `print('\udcff')` output vanished.
#[test]
fn lone_surrogates_in_kernel_messages_do_not_hang_or_vanish() {
    let d = util::tempdir();
    let o = lua(
        d.path(),
        r#"local k = assert(kernel.start{python = PY})
local e = k:execute([[raise ValueError('bad \udcfe')]], {timeout = 30})
assert(e.status == "error", e.status .. " " .. tostring(e.message))
assert(e.duration < 10, e.duration)
assert(e.ename == "ValueError" and e.evalue == "bad \u{FFFD}", e.evalue)
assert(e.traceback:find("bad \u{FFFD}", 1, true), e.traceback)
local p = k:execute([[print('x\udcff y', flush=True)]], {timeout = 30})
assert(p.status == "ok" and p.duration < 10, p.status)
assert(p.outputs[1] and p.outputs[1].text == "x\u{FFFD} y\n", p.outputs[1] and p.outputs[1].text)
assert(p.restarted == false and k:execute("1").status == "ok")
k:shutdown()
print("surrogates ok")"#,
    );
    assert!(ok(&o).contains("surrogates ok"));
}

/// Regression (issue 10): a SIGKILLed cellsci left its kernel running (53 s in a long C call that keeps
/// ipykernel's parent poller off the GIL), the kernel's children ran to their end, and a child that had
/// called setsid escaped entirely; the kernel folder with its key stayed in /tmp.
#[test]
fn a_sigkilled_host_leaves_no_kernel_or_kernel_child_running() {
    let d = util::tempdir();
    let pids = d.path().join("pids");
    let script = format!(
        r#"local kernel = require('kernel')
local k = assert(kernel.start{{python = {:?}}})
k:execute([[
import ctypes, os, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
escaped = subprocess.Popen(["sleep", "60"], start_new_session=True)
with open({:?}, "w") as f:
    f.write(f"{{os.getpid()}} {{child.pid}} {{escaped.pid}}\n")
ctypes.PyDLL(None).sleep(60)  # a C call that holds the GIL
]])"#,
        python().display().to_string(),
        pids.display().to_string()
    );
    let f = util::write(d.path(), "k.lua", &script);
    let host = util::Running::start(util::cellsci(d.path()).arg("script").arg(f));
    let all = read_pids(&pids, 3);
    util::wait_until("the kernel to be in its C call", 30, || in_nanosleep(all.0[0]));
    assert!(all.0.iter().all(|&p| pid_alive(p)), "all running before the kill");
    let folder_prefix = format!("cellsci-kernel-{}-", host.id());
    host.signal(libc::SIGKILL);
    host.finish();
    let t0 = std::time::Instant::now();
    util::wait_until("the kernel, its child and its setsid child to end (2 s)", 2, || {
        all.0.iter().all(|&p| !pid_alive(p))
    });
    eprintln!("kernel, child and setsid child gone {:?} after the host's SIGKILL", t0.elapsed());
    // the watchdog also removes the dead host's kernel folder (with its key)
    let folder_left = || {
        std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(&folder_prefix))
    };
    util::wait_until("the killed host's kernel folder to be removed (2 s)", 2, || !folder_left());
}

/// Regression (issue 10): k:shutdown() stopped the kernel but left the processes it had started
/// running, including one that had moved to its own session with a clean environment.
#[test]
fn kernel_shutdown_kills_the_kernels_children() {
    let d = util::tempdir();
    let pids = d.path().join("pids");
    let o = lua(
        d.path(),
        &format!(
            r#"local k = assert(kernel.start{{python = PY}})
local r = k:execute([[
import os, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
escaped = subprocess.Popen(["/bin/sleep", "60"], start_new_session=True, env={{}})
with open({:?}, "w") as f:
    f.write(f"{{child.pid}} {{escaped.pid}}\n")
]])
assert(r.status == "ok", r.status)
k:shutdown()
print("shut down")"#,
            pids.display().to_string()
        ),
    );
    let all = read_pids(&pids, 2);
    assert!(ok(&o).contains("shut down"));
    util::wait_until("the kernel's children to end after k:shutdown() (1 s)", 1, || {
        all.0.iter().all(|&p| !pid_alive(p))
    });
}

/// Issue 13: the kernel's channels were TCP ports on 127.0.0.1, reachable by every user of a shared
/// machine, and ipykernel warned "running over TCP without encryption" on every run.
#[test]
fn kernel_channels_are_private_unix_sockets_removed_with_the_kernel() {
    let d = util::tempdir();
    let o = lua(
        d.path(),
        r#"
local function folder(k)
  local f = assert(io.open("/proc/" .. k:pid() .. "/cmdline")); local cmd = f:read("a"); f:close()
  local cf = assert(cmd:match("([^%z]*connection%.json)"), cmd)
  return cf:match("(.*)/connection%.json$"), cf
end
local function exists(p) local f = io.open(p); if f then f:close() end return f ~= nil end
local function sh(c) local p = io.popen(c); local t = p:read("a"); p:close(); return t end

local k = assert(kernel.start{python = PY})
local dir, cf = folder(k)
local conn = assert(io.open(cf)):read("a")
assert(conn:find('"transport":"ipc"', 1, true), conn)
local modes = sh("stat -c '%a %F' " .. dir .. " " .. dir .. "/k-1 " .. dir .. "/k-2")
assert(modes == "700 directory\n755 socket\n755 socket\n" or modes:match("^700 directory\n%d+ socket\n%d+ socket\n$"), modes)
assert(k:execute("x = 41").status == "ok")
assert(k:execute("x + 1").outputs[1].data["text/plain"] == "42")
-- interrupt
local t = k:execute("import time\ntime.sleep(30)", {timeout = 0.5})
assert(t.status == "timeout" and not t.restarted, t.status)
assert(k:execute("x").outputs[1].data["text/plain"] == "41", "the interrupted kernel kept its state")
-- death is seen, and a restart gets a new private folder; the old one is gone
local dead = k:execute("import os\nos._exit(3)")
assert(dead.status == "dead" and dead.exit_code == 3, dead.status)
assert(k:restart())
local dir2 = folder(k)
assert(dir2 ~= dir and not exists(dir), "the dead kernel's folder is removed at restart")
assert(k:execute("1").status == "ok")
local log = assert(io.open(dir2 .. "/kernel.log")):read("a")
assert(not log:find("without encryption"), log)
k:shutdown()
assert(not exists(dir2 .. "/connection.json"), "the socket folder is removed at shutdown")

-- TCP stays available
local kt = assert(kernel.start{python = PY, transport = "tcp"})
local _, cft = folder(kt)
assert(assert(io.open(cft)):read("a"):find('"transport":"tcp"', 1, true))
assert(kt:execute("2 * 21").outputs[1].data["text/plain"] == "42")
kt:shutdown()
local okb, e = pcall(kernel.start, {python = PY, transport = "udp"})
assert(not okb and tostring(e):find([[option 'transport': expected "ipc" or "tcp", got "udp"]], 1, true), tostring(e))
print("IPC OK")
"#,
    );
    assert!(ok(&o).contains("IPC OK"));
}

/// Lua helpers for the pool tests: `kernel_pids()` lists this cellsci's kernel processes, `wait_for(what,
/// cond)` polls a condition without blocking other branches (a failsafe of 60 s, not a timing check).
const POOL_HELPERS: &str = r#"
local task, time = require('task'), require('time')
local function kernel_pids()
  local me = assert(io.open("/proc/self/stat")):read("a"):match("^(%d+)")
  -- [i]: the pattern does not match the shell that runs pgrep
  local p = io.popen("pgrep -P " .. me .. " -f '[i]pykernel_launcher'"); local t = p:read("a"); p:close()
  local v = {}
  for pid in t:gmatch("%d+") do v[#v + 1] = tonumber(pid) end
  return v
end
local function wait_for(what, cond)
  local t0 = time.monotonic()
  while not cond() do
    assert(time.monotonic() - t0 < 60, "timed out waiting for " .. what)
    time.sleep(0.02)
  end
end
"#;

/// Run a Lua snippet with the pool helpers.
fn pool_lua(dir: &Path, body: &str) -> Output {
    lua(dir, &format!("{POOL_HELPERS}\n{body}"))
}

/// Issue 12: a pool hands out kernels started ahead (no start-up wait when a slot is free), and a kernel
/// given back (release, or `with` however its function ends) comes back fresh, with no one's state.
#[test]
fn pool_hands_out_prestarted_kernels_and_fresh_ones_after_release() {
    let d = util::tempdir();
    let o = pool_lua(
        d.path(),
        r#"
local t0 = time.monotonic()
local solo = assert(kernel.start{python = PY})
local start_s = time.monotonic() - t0
solo:shutdown()

local pool = assert(kernel.pool{python = PY, size = 2})
assert(pool:size() == 2)
wait_for("two ready kernels", function() return pool:ready() == 2 end)
t0 = time.monotonic()
local a = assert(pool:acquire())
local acquire_s = time.monotonic() - t0
print(("PRESTART kernel.start %.3f s, pool:acquire %.4f s"):format(start_s, acquire_s))
assert(acquire_s < start_s / 4, "acquire waited on a start-up")
assert(a:alive() and a:gpu() == nil and tostring(a) == "kernel (python3)", tostring(a))
assert(a:execute("secret = 1").status == "ok")
assert(pool:release(a))
-- the handle is spent
assert(not a:alive() and a:pid() == nil)
local okx, e = pcall(a.execute, a, "1")
assert(not okx and tostring(e):find("given back to its pool", 1, true), tostring(e))

-- both kernels are clean, the released one included
local k1, k2 = assert(pool:acquire()), assert(pool:acquire())
for _, k in ipairs{k1, k2} do
  local r = k:execute("'secret' in globals()")
  assert(r.outputs[1].data["text/plain"] == "False", "a released kernel kept its state")
end
pool:release(k1); pool:release(k2)

-- with: the function's results; the kernel goes back however the function ends
local n, s = pool:with(function(k) k:execute("leak = 1"); return 42, "x" end)
assert(n == 42 and s == "x")
local okw, ew = pcall(pool.with, pool, function(k) error("boom") end)
assert(not okw and tostring(ew):find("boom"), tostring(ew))
assert(pool:with(function(k) pool:release(k); return true end), "a function may give its kernel back itself")
local seen = task.all({
  function() return pool:with(function(k) return k:execute("'leak' in globals()").outputs[1].data["text/plain"] end) end,
  function() return pool:with(function(k) return k:execute("'leak' in globals()").outputs[1].data["text/plain"] end) end,
})
assert(seen[1] == "False" and seen[2] == "False", "both slots came back clean")
-- a handle collected without release goes back to the pool
do local lost = assert(pool:acquire()) end
collectgarbage(); collectgarbage()
wait_for("the collected kernel back in the pool", function() return pool:ready() == 2 end)
pool:shutdown()

-- kernels that cannot start: acquire says why instead of waiting forever
local bad = assert(kernel.pool{python = PY, size = 2, cwd = "no/such/dir"})
local kb, eb = bad:acquire()
assert(kb == nil and eb.kind == "start" and eb.message:find("does not exist"), tostring(eb))
local okc, ec = pcall(pool.acquire, pool)
assert(not okc and tostring(ec):find("pool:acquire: the pool is shut down", 1, true), tostring(ec))
print("POOL OK")
"#,
    );
    let t = ok(&o);
    assert!(t.contains("POOL OK"), "{t}");
    eprintln!("{}", t.lines().find(|l| l.starts_with("PRESTART")).unwrap_or(""));
}

/// Issue 12: with every kernel handed out, `pool:acquire()` waits, without stopping the other branches,
/// until one is given back.
#[test]
fn pool_acquire_waits_while_every_kernel_is_busy() {
    let d = util::tempdir();
    let o = pool_lua(
        d.path(),
        r#"
local pool = assert(kernel.pool{python = PY, size = 1})
wait_for("a ready kernel", function() return pool:ready() == 1 end)
local log = {}
task.all({
  function()
    local k = assert(pool:acquire()); log[#log + 1] = "A got"
    wait_for("B to ask", function() return log[#log] == "B asks" end)
    assert(k:execute("import time; time.sleep(0.3)").status == "ok")
    log[#log + 1] = "A releases"; pool:release(k)
  end,
  function()
    wait_for("A to hold the kernel", function() return log[1] == "A got" end)
    log[#log + 1] = "B asks"
    local k = assert(pool:acquire()); log[#log + 1] = "B got"
    pool:release(k)
  end,
})
local got = table.concat(log, ", ")
assert(got == "A got, B asks, A releases, B got", got)
print("WAIT OK")
"#,
    );
    assert!(ok(&o).contains("WAIT OK"));
}

/// Issue 12: a pool kernel that died (in a branch's cell, or idle in the pool) is replaced: the next
/// acquire gets a live kernel.
#[test]
fn pool_replaces_a_dead_kernel() {
    let d = util::tempdir();
    let o = pool_lua(
        d.path(),
        r#"
local pool = assert(kernel.pool{python = PY, size = 1})
local k = assert(pool:acquire())
local r = k:execute("import os; os._exit(3)")
assert(r.status == "dead", r.status)
pool:release(k)
k = assert(pool:acquire())
assert(k:alive() and k:execute("1 + 1").outputs[1].data["text/plain"] == "2")
pool:release(k)

-- killed while idle in the pool
wait_for("the idle kernel", function() return pool:ready() == 1 and #kernel_pids() == 1 end)
local idle = kernel_pids()[1]
os.execute("kill -9 " .. idle)
wait_for("the pool to see the death", function() return pool:ready() == 0 end)
k = assert(pool:acquire())
assert(k:pid() ~= idle and k:alive(), "a dead kernel was handed out")
assert(k:execute("2 + 2").outputs[1].data["text/plain"] == "4")
print("REPLACED OK")
"#,
    );
    assert!(ok(&o).contains("REPLACED OK"));
}

/// Issue 12: `exec.gpus` (or `gpus=`) pins slot i to GPU gpus[i]: the kernel sees only that GPU
/// (`CUDA_VISIBLE_DEVICES`) and `k:gpu()` says which; without gpus a kernel inherits the variable.
#[test]
fn pool_pins_each_slot_to_its_gpu() {
    let d = util::tempdir();
    util::write(d.path(), "cfg.json", r#"{"exec": {"gpus": [0, 1]}}"#);
    let script = format!(
        r#"local kernel, task = require('kernel'), require('task')
local PY = {:?}
local function seen(k) return k:execute("import os; print(os.environ.get('CUDA_VISIBLE_DEVICES'), end='')").outputs[1].text end
local pool = assert(kernel.pool{{python = PY}})
assert(pool:size() == 2, "size defaults to the number of GPUs")
local a, b = assert(pool:acquire()), assert(pool:acquire())
local got = {{[seen(a)] = a:gpu(), [seen(b)] = b:gpu()}}
assert(got["0"] == 0 and got["1"] == 1, seen(a) .. " " .. seen(b))
assert(tostring(a):find("gpu"), tostring(a))
pool:shutdown()
-- gpus= wins over the config; more slots than GPUs share them in turn
local p3 = assert(kernel.pool{{python = PY, size = 3, gpus = {{5, 6}}}})
local ks = {{assert(p3:acquire()), assert(p3:acquire()), assert(p3:acquire())}}
local n = {{}}
for _, k in ipairs(ks) do
  assert(seen(k) == tostring(k:gpu()), seen(k))
  n[k:gpu()] = (n[k:gpu()] or 0) + 1
end
assert(n[5] == 2 and n[6] == 1, "slots 1 and 3 on GPU 5, slot 2 on GPU 6")
p3:shutdown()
-- gpus = {{}}: no pinning, the kernel inherits the environment
local p0 = assert(kernel.pool{{python = PY, size = 1, gpus = {{}}}})
local k = assert(p0:acquire())
assert(k:gpu() == nil and seen(k) == "7", seen(k))
print("GPUS OK")"#,
        python().display().to_string()
    );
    let f = util::write(d.path(), "g.lua", &script);
    let o = util::cellsci(d.path())
        .args(["--config", "cfg.json", "script"])
        .arg(f)
        .env("CUDA_VISIBLE_DEVICES", "7")
        .output()
        .unwrap();
    assert!(ok(&o).contains("GPUS OK"));
}

/// Issue 12: branches run their cells at the same time: two (four) branches each running a 1 s cell on
/// their own pool kernel take about as long as one, not two (four) times as long.
#[test]
fn pool_branches_run_cells_at_the_same_time() {
    let d = util::tempdir();
    let o = pool_lua(
        d.path(),
        r#"
local pool = assert(kernel.pool{python = PY, size = 4})
wait_for("four ready kernels", function() return pool:ready() == 4 end)
local function branch()
  return pool:with(function(k) assert(k:execute("import time; time.sleep(1)").status == "ok") end)
end
local function timed(n)
  wait_for("four ready kernels", function() return pool:ready() == 4 end)
  local fs = {}
  for i = 1, n do fs[i] = branch end
  local t0 = time.monotonic()
  task.all(fs)
  return time.monotonic() - t0
end
local one, two, four = timed(1), timed(2), timed(4)
print(("OVERLAP one %.3f s, two %.3f s (%.2fx), four %.3f s (%.2fx)"):format(one, two, two / one, four, four / one))
assert(two < 2 * one, "two branches' cells did not overlap")
assert(four < 2 * one, "four branches' cells did not overlap")
"#,
    );
    let t = ok(&o);
    eprintln!("{}", t.lines().find(|l| l.starts_with("OVERLAP")).unwrap_or(&t));
}

/// Issue 12: Ctrl-C while four branches each run a cell on a pool kernel leaves no kernel running (nor
/// starts new ones for the slots given back).
#[test]
fn ctrl_c_with_four_busy_pool_kernels_leaves_no_kernel_running() {
    let d = util::tempdir();
    let script = format!(
        r#"{POOL_HELPERS}
local kernel = require('kernel')
local pool = assert(kernel.pool{{python = {:?}, size = 4}})
local fs = {{}}
for i = 1, 4 do
  fs[i] = function()
    return pool:with(function(k)
      return assert(k:execute("import os, time\nopen(f'busy-{{os.getpid()}}', 'w').close()\ntime.sleep(60)"))
    end)
  end
end
task.all(fs)
"#,
        python().display().to_string()
    );
    let f = util::write(d.path(), "c.lua", &script);
    let host = util::Running::start(util::cellsci(d.path()).arg("script").arg(f));
    let busy = || -> Vec<i32> {
        let names =
            std::fs::read_dir(d.path()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned());
        names.filter_map(|n| n.strip_prefix("busy-").and_then(|p| p.parse().ok())).collect()
    };
    util::wait_until("four busy kernels", 90, || busy().len() == 4);
    let kernels = busy();
    let tag = format!("CELLSCI_KERNEL_TAG={}-", host.id());
    host.signal(libc::SIGINT);
    let (status, out) = host.finish();
    assert_eq!(status.code(), Some(130), "{out}");
    let left: Vec<i32> = kernels.iter().copied().filter(|&p| pid_alive(p)).collect();
    let tagged = tagged_processes(&tag);
    for &p in left.iter().chain(&tagged) {
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    assert!(left.is_empty(), "pool kernels still running after Ctrl-C: {left:?} of {kernels:?}\n{out}");
    assert!(tagged.is_empty(), "processes of the run's kernels still running: {tagged:?}\n{out}");
}

/// Processes whose environment holds `needle` (e.g. a run's kernel tag), zombies excepted.
fn tagged_processes(needle: &str) -> Vec<i32> {
    let procs = std::fs::read_dir("/proc").unwrap().flatten();
    let pids = procs.filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok());
    pids.filter(|&p| {
        let env = std::fs::read(format!("/proc/{p}/environ")).unwrap_or_default();
        pid_alive(p) && env.split(|&b| b == 0).any(|v| v.starts_with(needle.as_bytes()))
    })
    .collect()
}

/// Issue 12: a pool that is garbage-collected kills its kernels (a script that drops a pool does not
/// leave kernels running until cellsci exits).
#[test]
fn a_collected_pool_kills_its_kernels() {
    let d = util::tempdir();
    let o = pool_lua(
        d.path(),
        r#"
local pool = assert(kernel.pool{python = PY, size = 2})
wait_for("two ready kernels", function() return pool:ready() == 2 and #kernel_pids() == 2 end)
pool = nil
collectgarbage(); collectgarbage()
wait_for("the kernels to go", function() return #kernel_pids() == 0 end)
print("COLLECTED OK")
"#,
    );
    assert!(ok(&o).contains("COLLECTED OK"));
}

/// Issue 11: kernel options were read with raw table reads whose errors named neither the option nor
/// the script line; every kernel and pool option error now has the common shape.
#[test]
fn kernel_and_pool_option_errors_name_the_option_and_line() {
    let d = util::tempdir();
    let o = pool_lua(
        d.path(),
        r#"
local function err(f, ...)
  local okf, e = pcall(f, ...)
  assert(not okf, "no error")
  return (tostring(e):gsub("^runtime error: ", ""):match("^[^\n]*"))
end
local cases = {
  {err(kernel.start, {cwd = {}}), "kernel.start: option 'cwd': expected a string, got table"},
  {err(kernel.start, {transport = "udp"}), [[kernel.start: option 'transport': expected "ipc" or "tcp", got "udp"]]},
  {err(kernel.start, {startup_timeout = -1}), "kernel.start: option 'startup_timeout': expected a positive number, got -1"},
  {err(kernel.start, {env = {A = {}}}), "kernel.start: option 'env.A': expected a string, got table"},
  {err(kernel.start, {packages = {1}}), "kernel.start: option 'packages': expected a list of strings, got integer"},
  {err(kernel.start, "python3"), "kernel.start: expected a table of options, got string"},
  {err(kernel.pool, {python = PY, size = 0}), "kernel.pool: option 'size': expected a whole number >= 1, got 0"},
  {err(kernel.pool, {python = PY, gpus = {"a"}}), "kernel.pool: option 'gpus': expected a list of GPU ids (whole numbers >= 0), got string"},
  {err(kernel.pool, {python = PY, gpus = {-1}}), "kernel.pool: option 'gpus': expected a list of GPU ids (whole numbers >= 0), got -1"},
  {err(kernel.pool, {python = PY, sise = 2}), "kernel.pool: unknown option 'sise'"},
}
local k = assert(kernel.start{python = PY})
cases[#cases + 1] = {err(k.execute, k, 42), "k:execute: expected the code (a string), got integer"}
cases[#cases + 1] = {err(k.execute, k, "1", {timeout = "x"}), "k:execute: option 'timeout': expected a positive number of seconds or false, got string"}
cases[#cases + 1] = {err(k.execute, k, "1", {timeout = 0}), "k:execute: option 'timeout': expected a positive number, got 0"}
local pool = assert(kernel.pool{python = PY, size = 1})
cases[#cases + 1] = {err(pool.release, pool, k), "pool:release: this kernel is not from a pool (kernel.start)"}
cases[#cases + 1] = {err(pool.release, pool, "k"), "pool:release: expected a kernel of this pool, got string"}
cases[#cases + 1] = {err(pool.with, pool, 1), "pool:with: expected a function, got integer"}
local pk = assert(pool:acquire())
pool:release(pk)
cases[#cases + 1] = {err(pool.release, pool, pk), "pool:release: this kernel was given back already"}
for _, c in ipairs(cases) do
  local got, want = c[1], c[2]
  assert(got:match("^t%.lua:%d+: ") and got:find(want, 1, true), ("\n got: %s\nwant: %s"):format(got, want))
end
-- uncaught: the message a user sees
kernel.start{cwd = {}}
"#,
    );
    assert_eq!(o.status.code(), Some(2), "{}", util::text(&o));
    let script = std::fs::read_to_string(d.path().join("t.lua")).unwrap();
    let line = script.lines().position(|l| l == "kernel.start{cwd = {}}").unwrap() + 1;
    let err = String::from_utf8_lossy(&o.stderr);
    let want = format!("error: t.lua:{line}: kernel.start: option 'cwd': expected a string, got table\n");
    assert!(err.starts_with(&want), "{err}");
}

/// A pool kernel taken for one trial is moved into the trial's folder with its variables (`k:enter`),
/// and stays there across a restart (a dead kernel, a timeout): the replayed cells write where the trial
/// is. Given back, it leaves: the next taker gets a kernel in no one's folder.
#[test]
fn a_pool_kernel_entered_into_a_folder_stays_there_across_restarts_until_given_back() {
    let d = util::tempdir();
    let trial = d.path().join("trial one");
    std::fs::create_dir_all(&trial).unwrap();
    let o = lua(
        d.path(),
        &format!(
            r#"
local pool = assert(kernel.pool{{size = 1, python = PY}})
local k = assert(pool:acquire())
local TRIAL = {trial:?}
assert(k:enter{{cwd = TRIAL, env = {{OUTPUT_DIR = TRIAL}}}})
local function where(k)
  local r = k:execute("import os; print(os.getcwd() + '|' + os.environ.get('OUTPUT_DIR', '-'))")
  return r.outputs[1].text
end
assert(where(k) == TRIAL .. "|" .. TRIAL .. "\n", where(k))
assert(k:restart())
assert(where(k) == TRIAL .. "|" .. TRIAL .. "\n", "after a restart: " .. where(k))
pool:release(k)
k = assert(pool:acquire())
assert(not where(k):find(TRIAL, 1, true), "the next taker is not in the last one's folder: " .. where(k))
local bad, err = k:enter{{cwd = TRIAL .. "/missing"}}
assert(not bad and err.kind == "start" and err.message:find("FileNotFoundError"), tostring(err))
pool:shutdown()
print("OK")
"#,
            trial = trial.display().to_string()
        ),
    );
    let out = ok(&o);
    assert!(out.contains("OK"), "{out}");
}

/// The cap of what a cell keeps: `k:execute{max_output_bytes=}`, else `exec.max_output_bytes`; 0 keeps
/// everything; each stream has its own.
#[test]
fn what_a_cell_keeps_of_a_stream_is_capped_by_option_and_by_config() {
    let d = util::tempdir();
    util::write(d.path(), "cfg.json", r#"{"exec": {"max_output_bytes": 10000}}"#);
    let script = format!(
        r#"local kernel = require('kernel')
local k = assert(kernel.start{{python = {:?}}})
local code = "import sys\nfor i in range(20000):\n    print(i)\n    print('e', i, file=sys.stderr)"
local r = k:execute(code)
assert(r.status == "ok", r.status)
assert(#r.outputs == 2, #r.outputs)
for _, o in ipairs(r.outputs) do
  assert(#o.text < 10500, o.name .. " " .. #o.text)
  assert(o.text:find("dropped here", 1, true), o.text)
end
local function stdout(res)
  local parts = {{}}
  for _, o in ipairs(res.outputs) do if o.name == "stdout" then table.insert(parts, o.text) end end
  return table.concat(parts)
end
local out = stdout(r)
assert(out:sub(1, 2) == "0\n" and out:sub(-6) == "19999\n", out:sub(-20))
r = k:execute(code, {{max_output_bytes = 0}})
assert(#stdout(r) > 100000 and not stdout(r):find("dropped here", 1, true))
r = k:execute("print('x' * 5000)", {{max_output_bytes = 1000}})
assert(#r.outputs[1].text < 1300, #r.outputs[1].text)
assert(k:execute("print('still here')").outputs[1].text == "still here\n")
k:shutdown()
"#,
        python().display().to_string()
    );
    let f = util::write(d.path(), "t.lua", &script);
    ok(&util::cellsci(d.path()).args(["-c", "cfg.json", "script"]).arg(f).output().unwrap());
}

//! The command line as phase-2 users type it, config loading and its errors, `cellsci script`, module
//! shadowing, `scripts export`, and Ctrl-C.

use crate::util::{self, cellsci, text, write, Running};

/// A user pipeline that prints which command ran and its options, so parsing can be checked end to end.
const ECHO_PIPELINE: &str = r#"
local json = require("json")
local M = {}
for _, c in ipairs({ "run", "generate", "execute", "analyze" }) do
  M[c] = function(opts) print(c .. " " .. json.encode(opts)) end
end
return M
"#;

fn echo_setup() -> tempfile::TempDir {
    let d = util::tempdir();
    write(d.path(), "user/pipeline.lua", ECHO_PIPELINE);
    write(d.path(), "cfg.json", r#"{"dataset_name": "demo"}"#);
    write(d.path(), "p.yaml", "system: hi\n");
    d
}

fn run_ok(d: &std::path::Path, args: &[&str]) -> String {
    let o = cellsci(d).args(args).output().unwrap();
    assert!(o.status.success(), "cellsci {args:?} failed: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn phase2_commands_parse_with_the_original_flags() {
    let d = echo_setup();
    let dir = d.path();
    let p = dir.join("p.yaml").display().to_string();
    let out = run_ok(dir, &["--config", "cfg.json", "--scripts", "user", "run", "--use-idea"]);
    assert_eq!(out.trim(), r#"run {"use_idea":true}"#);
    let out =
        run_ok(dir, &["--config", "cfg.json", "--scripts", "user", "run", "--use-idea", "--prompt-file", "p.yaml"]);
    assert_eq!(out.trim(), format!(r#"run {{"prompt_file":"{p}","use_idea":true}}"#));
    let out = run_ok(dir, &["--config", "cfg.json", "--scripts", "user", "run", "--use-idea", "--fail-if-unmet"]);
    assert_eq!(out.trim(), r#"run {"fail_if_unmet":true,"use_idea":true}"#);
    let out = run_ok(dir, &["--config", "cfg.json", "--scripts", "user", "generate", "--prompt-file", "p.yaml"]);
    assert_eq!(out.trim(), format!(r#"generate {{"prompt_file":"{p}","use_idea":false}}"#));
    let out = run_ok(dir, &["--config", "cfg.json", "--scripts", "user", "execute"]);
    assert_eq!(out.trim(), "execute {}");
    let out = run_ok(dir, &["--config", "cfg.json", "--scripts", "user", "analyze"]);
    assert_eq!(out.trim(), "analyze {}");
    // -c and options after the subcommand work too.
    let out = run_ok(dir, &["run", "-c", "cfg.json", "--use-idea", "--scripts", "user"]);
    assert_eq!(out.trim(), r#"run {"use_idea":true}"#);
}

#[test]
fn help_lists_the_phase2_commands_and_flags() {
    let d = util::tempdir();
    let out = run_ok(d.path(), &["--help"]);
    for w in ["run", "generate", "execute", "analyze", "script", "scripts", "--config"] {
        assert!(out.contains(w), "--help lacks {w}: {out}");
    }
    let out = run_ok(d.path(), &["run", "--help"]);
    assert!(out.contains("--use-idea") && out.contains("--prompt-file"), "{out}");
    let out = run_ok(d.path(), &["generate", "--help"]);
    assert!(out.contains("--use-idea") && out.contains("--prompt-file"), "{out}");
}

fn config_error(json: &str) -> String {
    let d = echo_setup();
    write(d.path(), "bad.json", json);
    let o = cellsci(d.path()).args(["-c", "bad.json", "--scripts", "user", "execute"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(o.stdout.is_empty(), "the pipeline must not run: {}", text(&o));
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

#[test]
fn config_wrong_type_names_the_key_path_and_line() {
    let err = config_error("{\n  \"dataset_name\": \"x\",\n  \"exec\": {\n    \"max_fix_rounds\": \"five\"\n  }\n}\n");
    assert_eq!(err, r#"error: bad.json:4: exec.max_fix_rounds: expected a whole number >= 0, got "five""#);
    let err = config_error(r#"{"experiment": {"max_iterations": -1}}"#);
    assert_eq!(err, "error: bad.json:1: experiment.max_iterations: expected a whole number >= 0, got -1");
    let err = config_error(r#"{"exec": {"enable_llm_autofix": "yes"}}"#);
    assert_eq!(err, r#"error: bad.json:1: exec.enable_llm_autofix: expected true or false, got "yes""#);
    let err = config_error(r#"{"exec": {"gpus": [0, "a"]}}"#);
    assert_eq!(
        err,
        "error: bad.json:1: exec.gpus: expected a list of whole numbers >= 0 (element 1: \"a\"), got a list"
    );
    let err = config_error(r#"{"llm": ["x"]}"#);
    assert_eq!(err, "error: bad.json:1: llm: expected an object, got a list");
    let err = config_error("[1, 2]");
    assert_eq!(err, "error: bad.json: the config must be a JSON object, got a list");
}

#[test]
fn config_syntax_error_gives_file_line_column() {
    let err = config_error("{\n  \"exec\": {\n    \"max_fix_rounds\": 3,\n  }\n}\n");
    assert_eq!(err, "error: bad.json:4:3: invalid JSON: trailing comma");
    let err = config_error("{\n  \"a\": 1\n  \"b\": 2\n}");
    assert!(err.starts_with("error: bad.json:3:3: invalid JSON: expected `,` or `}`"), "{err}");
}

#[test]
fn config_missing_file_names_the_path() {
    let d = echo_setup();
    let o = cellsci(d.path()).args(["--config", "nope/cfg.json", "--scripts", "user", "run"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&o.stderr).trim(), "error: config file not found: nope/cfg.json");
    // No --config and no generate_execution_config.json here: say how to fix it.
    let o = cellsci(d.path()).args(["--scripts", "user", "run"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("no config file: pass --config FILE"), "{}", text(&o));
}

#[test]
fn config_numbers_written_as_strings_are_accepted() {
    let d = util::tempdir();
    write(d.path(), "c.json", r#"{"exec": {"max_fix_rounds": "4", "timeout_seconds": "90.5", "cuda_device_id": 1.0}}"#);
    write(
        d.path(),
        "t.lua",
        r#"local c = require("host").config
assert(c.exec.max_fix_rounds == 4 and math.type(c.exec.max_fix_rounds) == "integer", tostring(c.exec.max_fix_rounds))
assert(c.exec.timeout_seconds == 90.5)
assert(c.exec.cuda_device_id == 1)"#,
    );
    let o = cellsci(d.path()).args(["-c", "c.json", "script", "t.lua"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn config_expands_top_level_values_then_environment_and_keeps_unknown_names() {
    let d = util::tempdir();
    write(
        d.path(),
        "conf/c.json",
        r#"{
  "dataset_name": "BBBC021",
  "run_tag": "${dataset_name}_v2",
  "paths": {"design_execution_root": "${CELLSCI_TEST_ROOT}/${run_tag}"},
  "llm": {"model": "${CELLSCI_TEST_MODEL}", "base_url": "http://127.0.0.1:9/v1"},
  "prompt_branch": {"note": "device ${cuda_device_str}; ${dataset_name} $dataset_name ${ x"},
  "literature": {"query": "${dataset_name} cell painting", "list": ["${dataset_name}", 3]}
}"#,
    );
    write(
        d.path(),
        "t.lua",
        r#"local c = require("host").config
assert(c.dataset_name == "BBBC021")
assert(c.run_tag == "BBBC021_v2", c.run_tag)
assert(c.paths.design_execution_root == "/data/root/BBBC021_v2", c.paths.design_execution_root)
assert(c.llm.model == "gpt-test", c.llm.model)
assert(c.llm.base_url == "http://127.0.0.1:9/v1")
-- unknown names stay as written: the pipeline expands ${cuda_device_str} in prompts later
assert(c.prompt_branch.note == "device ${cuda_device_str}; BBBC021 $dataset_name ${ x", c.prompt_branch.note)
-- unknown sections are kept, and expanded too
assert(c.literature.query == "BBBC021 cell painting")
assert(c.literature.list[1] == "BBBC021" and c.literature.list[2] == 3)
print("ok")"#,
    );
    let o = cellsci(d.path())
        .args(["-c", "conf/c.json", "script", "t.lua"])
        .env("CELLSCI_TEST_ROOT", "/data/root")
        .env("CELLSCI_TEST_MODEL", "gpt-test")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "ok");
}

#[test]
fn config_relative_paths_resolve_against_the_current_folder_like_the_original() {
    // The unified runner keeps its merged config in _pipeline_cache/ with paths meant from the phase
    // folder (its current folder): resolving against the config's folder sent every path astray.
    let d = util::tempdir();
    let root = d.path().canonicalize().unwrap();
    write(
        &root,
        "proj/conf/c.json",
        r#"{
  "paths": {"stage1_analysis_dir": "../stage1", "design_execution_root": "./out", "baseline_source_dir": "/abs/base",
            "custom_thing": "data/x.h5", "here": "${config_dir}/data"},
  "prompt_branch": {"prompt_file": "prompts/gen.yaml", "idea_file": "../ideas/idea.json", "save_root": "runs",
                    "strategy_prompt_file": "${config_dir}/prompts/strategy.yaml"},
  "literature": {"out_dir": "lit", "query": "relative/looking/text"},
  "exec": {"python": "venv/bin/python"},
  "llm": {"base_url": "http://127.0.0.1:9/v1"}
}"#,
    );
    let conf = root.join("proj/conf").display().to_string();
    let cwd = root.join("elsewhere").display().to_string();
    let top = root.display().to_string();
    write(
        &root,
        "elsewhere/t.lua",
        &format!(
            r#"local c = require("host").config
local function eq(a, b) assert(a == b, tostring(a) .. " ~= " .. tostring(b)) end
eq(c.paths.stage1_analysis_dir, "{top}/stage1")
eq(c.paths.design_execution_root, "{cwd}/out")
eq(c.paths.baseline_source_dir, "/abs/base")
eq(c.paths.custom_thing, "{cwd}/data/x.h5")
eq(c.paths.here, "{conf}/data")
eq(c.prompt_branch.prompt_file, "{cwd}/prompts/gen.yaml")
eq(c.prompt_branch.idea_file, "{top}/ideas/idea.json")
eq(c.prompt_branch.save_root, "{cwd}/runs")
eq(c.prompt_branch.strategy_prompt_file, "{conf}/prompts/strategy.yaml")
eq(c.literature.out_dir, "{cwd}/lit")
eq(c.literature.query, "relative/looking/text")
eq(c.exec.python, "{cwd}/venv/bin/python")
eq(c.llm.base_url, "http://127.0.0.1:9/v1")
eq(require("host").config_file, "{conf}/c.json")
print("ok")"#
        ),
    );
    let o = cellsci(&root.join("elsewhere")).args(["-c", "../proj/conf/c.json", "script", "t.lua"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn config_defaults_fill_missing_keys_and_the_api_key_stays_out_of_scripts() {
    let d = util::tempdir();
    write(d.path(), "c.json", r#"{"llm": {"api_key": "sk-test-SECRET-1234", "model": "m1"}, "experiment": {}}"#);
    write(
        d.path(),
        "t.lua",
        r#"local c = require("host").config
assert(c.llm.model == "m1")
assert(c.llm.api_key == nil, "the API key must not be visible to scripts")
assert(c.exec.max_fix_rounds == 3 and c.exec.enable_llm_autofix == true and c.exec.viz_format == "mermaid")
assert(c.experiment.primary_metric == "PCC" and c.experiment.max_iterations == 3)
assert(c.prompt_branch.strict_json_only == true and c.prompt_branch.json_retries == 2)
assert(c.dataset_name == "")
print(require("json").encode(c))"#,
    );
    let o = cellsci(d.path()).args(["-c", "c.json", "script", "t.lua"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("SECRET"), "{}", text(&o));
}

#[test]
fn script_gets_arg_and_its_return_value_is_the_exit_code() {
    let d = util::tempdir();
    write(
        d.path(),
        "s.lua",
        r#"assert(arg[0]:match("s%.lua$"), arg[0])
assert(#arg == 3, #arg)
assert(arg[1] == "one" and arg[2] == "--two" and arg[3] == "3")
print("args ok")
return tonumber(arg[3])"#,
    );
    let o = cellsci(d.path()).args(["script", "s.lua", "one", "--two", "3"]).output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "args ok");
}

#[test]
fn script_error_exits_2_with_file_and_line() {
    let d = util::tempdir();
    write(d.path(), "s.lua", "local x = 1\nassert(x == 2, 'x is not 2')\n");
    let o = cellsci(d.path()).args(["script", "s.lua"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&o.stderr).trim(), "error: s.lua:2: x is not 2");
    // Misuse of a host function names the calling line too.
    write(d.path(), "m.lua", "local fs = require('fs')\n\nfs.read(42)\n");
    let o = cellsci(d.path()).args(["script", "m.lua"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("m.lua:3: fs.read: expected a path string, got integer"), "{}", text(&o));
}

#[test]
fn user_file_shadows_the_embedded_module_of_the_same_name() {
    let d = util::tempdir();
    // Without a user copy, the bundled pipeline is found (from any folder).
    write(
        d.path(),
        "plain/t.lua",
        r#"local p, where = require("pipeline")
assert(type(p.run) == "function", "bundled pipeline has run()")
print(where)"#,
    );
    let o = cellsci(&d.path().join("plain")).args(["script", "t.lua"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).trim().ends_with("scripts/pipeline.lua"), "{}", text(&o));
    // A pipeline.lua next to the script wins.
    write(d.path(), "mine/pipeline.lua", "return { shadow = true }\n");
    write(
        d.path(),
        "mine/t.lua",
        r#"local p, where = require("pipeline")
assert(p.shadow == true, "the user's pipeline.lua must shadow the bundled one")
assert(where == "pipeline.lua", where)
print("shadowed")"#,
    );
    let o = cellsci(&d.path().join("mine")).args(["script", "t.lua"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "shadowed");
}

#[test]
fn scripts_export_round_trip() {
    let d = util::tempdir();
    let dir = d.path();
    let list = run_ok(dir, &["scripts", "list"]);
    let files: Vec<&str> = list.lines().collect();
    assert!(files.contains(&"scripts/pipeline.lua"), "{list}");
    let out = run_ok(dir, &["scripts", "export", "exp"]);
    // the bundled files and the editors' .luarc.json
    assert!(out.contains(&format!("wrote {} files", files.len() + 1)), "{out}");
    for rel in &files {
        let exported = std::fs::read(dir.join("exp").join(rel)).unwrap();
        let bundled = std::fs::read(util::repo().join(rel)).unwrap();
        assert!(exported == bundled, "{rel} differs from the bundled copy");
    }
    // Exporting again keeps edits unless --force.
    write(dir, "exp/scripts/pipeline.lua", "return { edited = true }\n");
    let out = run_ok(dir, &["scripts", "export", "exp"]);
    assert!(out.contains("wrote 0 files") && out.contains("kept"), "{out}");
    // A module required from the export folder is the exported (edited) file.
    write(
        dir,
        "t.lua",
        r#"local p, where = require("pipeline")
assert(p.edited == true, "the exported copy must be used")
print(where)"#,
    );
    let o = cellsci(dir).args(["--scripts", "exp/scripts", "script", "t.lua"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "exp/scripts/pipeline.lua");
    // --force restores the bundled one.
    run_ok(dir, &["scripts", "export", "exp", "--force"]);
    let restored = std::fs::read(dir.join("exp/scripts/pipeline.lua")).unwrap();
    assert!(restored == std::fs::read(util::repo().join("scripts/pipeline.lua")).unwrap());
    // Exported into a project folder, scripts/ and stdlib/ there are searched without --scripts.
    run_ok(dir, &["scripts", "export", "proj"]);
    write(dir, "proj/scripts/pipeline.lua", "return { project = true }\n");
    write(dir, "proj/t/t.lua", "local p, where = require('pipeline')\nassert(p.project)\nprint(where)\n");
    let o = cellsci(&dir.join("proj")).args(["script", "t/t.lua"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "scripts/pipeline.lua");
}

/// Run `script` until it prints `ready`, send SIGINT, and return (exit code, what it printed).
fn interrupt(script: &str) -> (Option<i32>, String) {
    let d = util::tempdir();
    write(d.path(), "s.lua", script);
    let mut run = Running::start(cellsci(d.path()).args(["script", "s.lua"]));
    assert_eq!(run.next_line().trim(), "ready");
    run.signal(libc::SIGINT);
    let (status, out) = run.finish();
    (status.code(), out)
}

#[test]
fn ctrl_c_stops_a_cpu_bound_lua_loop() {
    let (code, err) = interrupt("print('ready')\nio.stdout:flush()\nlocal n = 0\nwhile true do n = n + 1 end\n");
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("s.lua:4: interrupted (Ctrl-C)"), "{err}");
}

#[test]
fn ctrl_c_ends_a_sleep() {
    let (code, err) = interrupt(
        "print('ready')\nio.stdout:flush()\nlocal ok, e = require('time').sleep(3600)\nassert(ok, tostring(e))\n",
    );
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("s.lua:4: interrupted: interrupted (Ctrl-C)"), "{err}");
}

#[test]
fn host_modules_behave_as_documented() {
    let d = util::tempdir();
    write(
        d.path(),
        "t.lua",
        r#"
local json, yaml, fs, path, time, env, log = require("json"), require("yaml"), require("fs"), require("path"),
  require("time"), require("env"), require("log")

-- json: Python's non-finite tokens, stable key order, arrays, errors as nil, err
local v = assert(json.decode('{"b": NaN, "a": [Infinity, -Infinity, null, 1.5]}'))
assert(v.b ~= v.b and v.a[1] == math.huge and v.a[2] == -math.huge and v.a[3] == json.null)
assert(json.encode(v) == '{"a":[Infinity,-Infinity,null,1.5],"b":NaN}', json.encode(v))
assert(json.encode({}) == "{}" and json.encode(json.array()) == "[]")
assert(json.encode({ z = 1, a = { 1, 2 } }, { pretty = true }) == '{\n  "a": [\n    1,\n    2\n  ],\n  "z": 1\n}')
local none, err = json.decode('{"a": }')
assert(none == nil and err.kind == "parse" and err.line == 1 and err.column == 7, tostring(err))

-- yaml: merges, and the author's key order survives a round trip (keys added later come after, sorted)
local spec = assert(yaml.decode("system: s\ntask: t\nbase: &b {k: 1}\ndata:\n  <<: *b\n  j: .nan\n"))
assert(spec.data.k == 1 and spec.data.j ~= spec.data.j)
spec.system = nil
spec.extra = "e"
assert(yaml.encode(spec) == "task: t\nbase:\n  k: 1\ndata:\n  j: .nan\n  k: 1\nextra: e\n", yaml.encode(spec))
local bad, yerr = yaml.decode("a: [1,\n")
assert(bad == nil and yerr.kind == "parse" and yerr.message:find("line 2"), tostring(yerr))

-- fs: atomic write into new folders, append, sorted list, stat, glob, copy, rename, remove
assert(fs.write("out/a/f.txt", "one"))
assert(fs.append("out/a/f.txt", " two"))
assert(fs.read("out/a/f.txt") == "one two")
assert(fs.write("out/a/b.txt", "b") and fs.write("out/c.json", "{}"))
assert(table.concat(fs.list("out/a"), ",") == "b.txt,f.txt")
for _, n in ipairs(fs.list("out/a")) do assert(not n:find("%.tmp$"), "temp file left behind: " .. n) end
local st = assert(fs.stat("out/a/f.txt"))
assert(st.size == 7 and st.is_file and not st.is_dir and st.mtime > 0)
assert(table.concat(fs.glob("out/**/*.txt"), ",") == "out/a/b.txt,out/a/f.txt", table.concat(fs.glob("out/**/*.txt"), ","))
assert(table.concat(fs.glob("out/*.json"), ",") == "out/c.json")
assert(fs.copy("out/a", "copy/a") and fs.read("copy/a/f.txt") == "one two")
assert(fs.rename("copy/a/f.txt", "moved/g.txt") and not fs.exists("copy/a/f.txt") and fs.exists("moved/g.txt"))
local r, rerr = fs.remove("copy")
assert(r == nil and rerr.kind == "not_empty", tostring(rerr))
assert(fs.remove("copy", { recursive = true }) and not fs.exists("copy"))
assert(fs.remove("never-existed") == true)
local missing, ferr = fs.read("no/such/file")
assert(missing == nil and ferr.kind == "not_found" and ferr.path == "no/such/file")
assert(not pcall(fs.write, "x.txt", {}), "a table is misuse")

-- path
assert(path.join("a", "b", "c.txt") == "a/b/c.txt" and path.join("a", "/abs") == "/abs")
assert(path.dirname("a/b/c.txt") == "a/b" and path.dirname("c.txt") == ".")
assert(path.basename("a/b/c.tar.gz") == "c.tar.gz" and path.ext("c.tar.gz") == "gz" and path.stem("c.tar.gz") == "c.tar")
assert(path.abs("x/../y") == path.cwd() .. "/y")
assert(path.relative("/a/b/c", "/a/x") == "../b/c" and path.normalize("a/./b/../c") == "a/c")

-- time
assert(time.stamp():match("^%d%d%d%d%d%d%d%d_%d%d%d%d%d%d$"), time.stamp())
assert(time.stamp(0):match("^19[67]%d"), "a given time is used")
assert(time.iso():match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d"))
local t0 = time.monotonic()
assert(time.sleep(0.01) == true and time.monotonic() >= t0)

-- env: set for child processes, removed with nil
env.set("CELLSCI_TEST_VAR", 42)
assert(env.get("CELLSCI_TEST_VAR") == "42" and env.all().CELLSCI_TEST_VAR == "42")
assert(os.execute('test "$CELLSCI_TEST_VAR" = 42'), "a child process sees the variable")
env.set("CELLSCI_TEST_VAR", nil)
assert(env.get("CELLSCI_TEST_VAR") == nil and env.get("CELLSCI_TEST_VAR", "d") == "d")

-- log: stdout line, event file
log.set_event_file("trial/events.jsonl")
log.event("step", { n = 1 })
log.line("ITERATION 1/1")
log.warn("careful")
local lines = {}
for l in fs.read("trial/events.jsonl"):gmatch("[^\n]+") do lines[#lines + 1] = assert(json.decode(l)) end
assert(lines[1].kind == "step" and lines[1].n == 1 and lines[2].kind == "log" and lines[2].level == "warn")
"#,
    );
    let o = cellsci(d.path()).args(["script", "t.lua"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "ITERATION 1/1\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "warning: careful\n");
    // Atomic writes create files with the usual permissions, not the temp file's 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.path().join("out/a/f.txt")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o044, 0o044, "mode {mode:o}");
}

/// Regression: `**` in fs.glob followed symlinked folders, so a link back to a parent made it recurse
/// until the path was too long (thousands of duplicate matches, or a stack overflow).
#[test]
fn glob_double_star_does_not_follow_symlink_loops() {
    let d = util::tempdir();
    write(d.path(), "g/a/x.txt", "1");
    std::os::unix::fs::symlink("..", d.path().join("g/a/up")).unwrap();
    write(
        d.path(),
        "t.lua",
        r#"local fs = require("fs")
local got = table.concat(fs.glob("g/**/*.txt"), ",")
assert(got == "g/a/x.txt", got)
print("glob ok")"#,
    );
    let o = cellsci(d.path()).args(["script", "t.lua"]).output().unwrap();
    assert!(o.status.success() && text(&o).contains("glob ok"), "{}", text(&o));
}

/// Regression: a wrong argument type caught by mlua itself (`notebook.read(nil)`, `time.stamp("x")`)
/// was reported as a bare "bad argument #1: error converting Lua nil to String", naming neither the
/// function nor the script line.
#[test]
fn bad_argument_errors_name_the_function_and_line() {
    let d = util::tempdir();
    write(d.path(), "b.lua", "local nb = require('notebook')\n\nnb.read(nil)\n");
    let o = cellsci(d.path()).args(["script", "b.lua"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.starts_with("error: b.lua:3: notebook.read: bad argument #1"), "{err}");
    // an option of the wrong type
    write(
        d.path(),
        "o.lua",
        "local r = require('report')\n\nr.score({models = {a = {aggregate = {x = 1}}}}, {metric = {}})\n",
    );
    let o = cellsci(d.path()).args(["script", "o.lua"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.starts_with("error: o.lua:3: report.score: option 'metric': expected a string, got table"), "{err}");
}

/// Regression: `time.stamp(0/0)` (a NaN from a failed computation) gave 19700101_000000 instead of an error.
#[test]
fn time_of_nan_is_an_error_not_1970() {
    let d = util::tempdir();
    write(d.path(), "t.lua", "local time = require('time')\nlocal s = time.stamp(0/0)\nprint(s)\n");
    let o = cellsci(d.path()).args(["script", "t.lua"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("t.lua:2: time: NaN is not a valid time"), "{}", text(&o));
}

/// A mistyped API key (a number) is an error that names the key path but never prints the value.
#[test]
fn config_type_error_on_the_api_key_does_not_print_it() {
    let d = util::tempdir();
    util::write(d.path(), "c.json", r#"{"llm": {"api_key": 123456789987654321}}"#);
    util::write(d.path(), "s.lua", "return 0\n");
    let out = util::cellsci(d.path()).args(["-c", "c.json", "script", "s.lua"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = util::text(&out);
    assert!(text.contains("llm.api_key: expected"), "{text}");
    assert!(!text.contains("123456789987654321"), "{text}");
}

/// fs.copy of a folder into its own subfolder used to recurse until the path was too long.
#[test]
fn fs_copy_of_a_folder_into_itself_is_refused() {
    let d = util::tempdir();
    util::write(d.path(), "a/b/x.txt", "x");
    util::write(
        d.path(),
        "s.lua",
        "local fs = require('fs')\nlocal ok, err = fs.copy('a', 'a/b/c')\nassert(ok == nil and err.kind == 'invalid', tostring(err))\nassert(fs.copy('a', 'z'))\nassert(fs.read('z/b/x.txt') == 'x')\n",
    );
    let out = util::cellsci(d.path()).args(["script", "s.lua"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    assert!(!d.path().join("a/b/c").exists());
}

/// print() masks the API key like log.* does (a script printing its environment must not leak it).
#[test]
fn print_masks_the_api_key() {
    let d = util::tempdir();
    util::write(d.path(), "s.lua", "print('key:', require('env').get('OPENAI_API_KEY'), 42)\n");
    let out = util::cellsci(d.path())
        .env("OPENAI_API_KEY", "sk-test-SECRET123456789")
        .args(["script", "s.lua"])
        .output()
        .unwrap();
    let text = util::text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("key:\t") && text.contains("\t42"), "{text}");
    assert!(!text.contains("SECRET123456789"), "{text}");
}

#[test]
fn a_bad_option_names_the_function_the_option_what_was_expected_and_the_line() {
    // Options were read three ways, with three error shapes (and mlua's own messages for wrong types).
    let d = util::tempdir();
    write(
        d.path(),
        "t.lua",
        r#"local llm, fs, json, log = require("llm"), require("fs"), require("json"), require("log")
local function expect(f, want)
  local ok, e = pcall(f)
  assert(not ok, "no error for " .. want)
  local msg = tostring(e)
  assert(msg:find(want, 1, true), "wanted " .. want .. " in: " .. msg)
  assert(msg:find("t.lua:%d+:"), "no file:line in: " .. msg)
end
expect(function() return llm.chat{prompt = "x", temperature = "hot"} end, "llm.chat: option 'temperature': expected a finite number, got string")
expect(function() return llm.chat{prompt = "x", json = 1} end, "llm.chat: option 'json': expected true or false, got integer")
expect(function() return llm.chat{prompt = "x", promt = "y"} end, "llm.chat: unknown option 'promt'")
expect(function() return llm.clip("abc", {head = -1}) end, "llm.clip: option 'head': expected a whole number >= 0, got integer")
expect(function() return fs.read("x", {max_bytes = "many"}) end, "fs.read: option 'max_bytes': expected a whole number >= 0, got string")
expect(function() return fs.stat("x", {follow = "yes"}) end, "fs.stat: option 'follow': expected true or false, got string")
expect(function() return fs.walk(".", {max_depth = 1.5}) end, "fs.walk: option 'max_depth': expected a whole number >= 0, got number")
expect(function() return json.encode({}, {pretty = 1}) end, "json.encode: option 'pretty': expected true or false, got integer")
expect(function() return log.progress{total = "ten"} end, "log.progress: option 'total': expected a whole number >= 0, got string")
local report = require("report")
local m = {models = {a = {aggregate = {PCC = 0.5}}, b = {aggregate = {PCC = 0.6}}}}
expect(function() return report.compare(m, {metric = 5}) end, "report.compare: option 'metric': expected a string, got integer")
expect(function() return report.plot_iterations({}, {threshold = "high"}) end, "report.plot_iterations: option 'threshold': expected a finite number, got string")
expect(function() return report.markdown{metrics = m, title = {}} end, "report.markdown: option 'title': expected a string, got table")
print("ok")"#,
    );
    let o = cellsci(d.path()).args(["script", "t.lua"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "ok");
}

//! What a user with the installed tool alone sees: `--version`, `cellsci demo` and `cellsci init` run from
//! an empty folder, the Lua API's type stubs against the API the host really registers, and the bundled
//! Lua formatted by StyLua. (The wheel itself is tested in tests/wheel.rs, a binary of its own.)

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::util;
use crate::util::ship::{assert_demo_succeeded, head_commit, skip_unless_ci, stdout, test_python};

#[test]
fn version_names_the_version_and_the_commit_it_was_built_from() {
    let d = util::tempdir();
    let out = util::cellsci(d.path()).arg("--version").output().unwrap();
    let so = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let want = format!("cellsci {} (commit {})", env!("CARGO_PKG_VERSION"), head_commit());
    assert_eq!(so.lines().next(), Some(want.as_str()), "{so}");
    // a debug build says it reads the source tree, so nobody mistakes it for what a wheel does
    assert!(so.contains("bundled scripts, stdlib and prompts: read from"), "{so}");
    let short = util::cellsci(d.path()).arg("-V").output().unwrap();
    assert_eq!(stdout(&short).trim(), want);
}

#[test]
fn demo_in_an_empty_folder_writes_the_demo_runs_it_offline_and_says_where_the_report_and_page_are() {
    let d = util::tempdir();
    let out = util::cellsci(d.path()).arg("demo").arg("--python").arg(test_python()).output().unwrap();
    let dir = d.path().join("cellsci-demo");
    assert_demo_succeeded(&out, &std::fs::canonicalize(&dir).unwrap());
    for rel in
        ["generate_execution_config.json", "cassette.jsonl", "README.md", "stage1/reference/20261101_120000/idea.json"]
    {
        assert!(dir.join(rel).is_file(), "{rel} written");
    }
    // the stage-1 data is the demo's, byte for byte (it is embedded as bytes: HDF5)
    let rel = "stage1/reference/20261101_120000/REFERENCE_DATA.h5";
    assert_eq!(
        std::fs::read(dir.join(rel)).unwrap(),
        std::fs::read(util::repo().join("examples/demo").join(rel)).unwrap()
    );
    // the written config names the interpreter given, instead of a venv provisioned from PyPI
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("generate_execution_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["exec"]["python"], test_python().display().to_string());
    assert!(cfg["exec"].get("kernel_packages").is_none(), "{cfg:#}");
}

#[test]
fn demo_refuses_a_folder_that_is_not_empty_and_writes_nothing() {
    let d = util::tempdir();
    let mine = util::write(d.path(), "cellsci-demo/notes.txt", "my notes");
    let out = util::cellsci(d.path()).args(["demo", "--no-run"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", util::text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cellsci-demo") && err.contains("not empty") && err.contains("never overwrites"), "{err}");
    assert_eq!(std::fs::read_to_string(&mine).unwrap(), "my notes");
    assert_eq!(std::fs::read_dir(d.path().join("cellsci-demo")).unwrap().count(), 1, "nothing added");

    // an empty folder, or one that does not exist, is fine; --no-run only writes
    std::fs::create_dir(d.path().join("empty")).unwrap();
    let out = util::cellsci(d.path()).args(["demo", "empty", "--no-run"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    assert!(stdout(&out).contains("demo: run it with: cellsci -c empty/generate_execution_config.json run --use-idea"));
    assert!(d.path().join("empty/cassette.jsonl").is_file());
    assert!(!d.path().join("empty/results").exists(), "--no-run ran nothing");
}

#[test]
fn demo_with_a_python_that_does_not_exist_is_a_usage_error_naming_it() {
    let d = util::tempdir();
    let out = util::cellsci(d.path()).args(["demo", "here", "--python", "/nonexistent/python3"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", util::text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("demo --python /nonexistent/python3: no such file"));
    assert!(!d.path().join("here").exists(), "nothing written");
    // the demo has a config of its own: one given is refused, not silently ignored
    let out = util::cellsci(d.path()).args(["-c", "mine.json", "demo", "here"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", util::text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("demo: --config is not for demo"), "{}", util::text(&out));
    assert!(!d.path().join("here").exists(), "nothing written");
}

#[test]
fn init_writes_a_commented_config_that_loads_and_names_the_prompt_files_it_wrote() {
    let d = util::tempdir();
    let out = util::cellsci(d.path()).args(["init", "proj"]).output().unwrap();
    let so = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    assert!(so.contains("wrote proj/generate_execution_config.json"), "{so}");
    assert!(so.contains("cellsci -c proj/generate_execution_config.json run --use-idea"), "{so}");
    let proj = std::fs::canonicalize(d.path().join("proj")).unwrap();
    for p in ["generation", "fix", "strategy", "report"] {
        let rel = format!("prompts/{p}.yaml");
        assert_eq!(
            std::fs::read_to_string(proj.join(&rel)).unwrap(),
            std::fs::read_to_string(util::repo().join(&rel)).unwrap(),
            "{rel} is the bundled prompt"
        );
    }
    // the comments are JSON keys ("//"), which cellsci and Python's json both read
    let text = std::fs::read_to_string(proj.join("generate_execution_config.json")).unwrap();
    assert!(text.contains("\"//\""), "{text}");
    // the config loads as cellsci loads it (types checked), and the pipeline would use the prompts written
    let show = util::write(
        d.path(),
        "show.lua",
        r#"local c = require("host").config
print(c.prompt_branch.prompt_file)
print(c.prompt_branch.fix_prompt_file)
print(c.experiment.primary_metric, c.experiment.success_threshold, c.exec.max_fix_rounds, c.search.strategy)
print(c.paths.design_execution_root)
"#,
    );
    let out = util::cellsci(d.path())
        .arg("-c")
        .arg("proj/generate_execution_config.json")
        .arg("script")
        .arg(&show)
        .output()
        .unwrap();
    let so = util::ok(&out);
    let lines: Vec<&str> = so.lines().collect();
    assert_eq!(lines[0], proj.join("prompts/generation.yaml").display().to_string(), "{so}");
    assert_eq!(lines[1], proj.join("prompts/fix.yaml").display().to_string(), "{so}");
    assert_eq!(lines[2], "PCC\t0.5\t3\tserial", "{so}");
    assert_eq!(lines[3], proj.join("results/MY_DATASET/generate_execution").display().to_string(), "{so}");
}

#[test]
fn init_refuses_to_overwrite_and_names_each_file_in_the_way() {
    let d = util::tempdir();
    let mine = util::write(d.path(), "prompts/fix.yaml", "system_prompt: my own\n");
    let out = util::cellsci(d.path()).arg("init").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", util::text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("prompts/fix.yaml already exists") && err.contains("never overwrites"), "{err}");
    assert_eq!(std::fs::read_to_string(&mine).unwrap(), "system_prompt: my own\n");
    assert!(!d.path().join("generate_execution_config.json").exists(), "nothing written");
    assert!(!d.path().join("prompts/generation.yaml").exists(), "nothing written");
}

/// The module functions the host registers, as a script sees them: `module.name` for every function in
/// the table `require(module)` returns (and in its subtables).
fn registered_functions() -> Vec<String> {
    let d = util::tempdir();
    let names: Vec<&str> = cellsci::lua::MODULES.iter().map(|(n, _)| *n).collect();
    let script = util::write(
        d.path(),
        "api.lua",
        &format!(
            r#"local out = {{}}
local function walk(prefix, t, depth)
  for k, v in pairs(t) do
    if type(k) == "string" then
      if type(v) == "function" then out[#out + 1] = prefix .. "." .. k
      elseif type(v) == "table" and depth < 2 and k ~= "config" then walk(prefix .. "." .. k, v, depth + 1) end
    end
  end
end
for _, m in ipairs({{ "{}" }}) do walk(m, require(m), 0) end
table.sort(out)
print(table.concat(out, "\n"))
"#,
            names.join("\", \"")
        ),
    );
    let out = util::cellsci(d.path()).arg("script").arg(&script).output().unwrap();
    util::ok(&out).lines().map(str::to_string).collect()
}

/// The functions `stdlib/meta/<module>.lua` declares on the module's table (`function llm.chat(opts)`).
fn stubbed_functions() -> Vec<String> {
    let word = regex::Regex::new(r"(?m)^return\s+(\w+)\s*$").unwrap();
    let mut out = Vec::new();
    for (name, _) in cellsci::lua::MODULES {
        let file = util::repo().join(format!("stdlib/meta/{name}.lua"));
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e}: every module needs its stubs", file.display()));
        let var = &word.captures(&text).unwrap_or_else(|| panic!("{}: no `return <table>`", file.display()))[1];
        let decl = regex::Regex::new(&format!(r"(?m)^function\s+{var}((?:\.\w+)+)\s*\(")).unwrap();
        for c in decl.captures_iter(&text) {
            out.push(format!("{name}{}", &c[1]));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The stubs cannot drift from the API: every function a module really has is stubbed, and every stubbed
/// function exists (a rename on either side fails here, naming the function).
#[test]
fn the_type_stubs_describe_exactly_the_functions_the_host_registers() {
    let real = registered_functions();
    let stubs = stubbed_functions();
    assert!(real.contains(&"llm.chat".to_string()) && real.len() > 40, "{real:?}");
    let missing: Vec<&String> = real.iter().filter(|f| !stubs.contains(f)).collect();
    let stale: Vec<&String> = stubs.iter().filter(|f| !real.contains(f)).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "registered but not in stdlib/meta: {missing:?}\nin stdlib/meta but not registered: {stale:?}"
    );
}

/// The Rust type of each handle the host gives scripts, and its class in the stubs. A new handle type
/// fails the test below until it is added here (and stubbed).
const HANDLES: &[(&str, &str, &str)] = &[
    // (Rust type, stub class, Lua that makes one: `d` is a temp folder, `py` the test venv's python)
    ("Lock", "fs.Lock", "assert(require('fs').lock(d .. '/x.lock'))"),
    ("Sink", "log.Sink", "require('log').sink(d .. '/events.jsonl')"),
    ("Progress", "log.Progress", "require('log').progress{total = 1}"),
    ("LuaNotebook", "notebook.Notebook", "require('notebook').new()"),
    ("Canceller", "task.Canceller", "require('task').canceller()"),
    ("LuaKernel", "kernel.Kernel", "assert(require('kernel').start{python = py})"),
    ("LuaPool", "kernel.Pool", "assert(require('kernel').pool{size = 1, python = py})"),
];

/// The methods each handle type registers (`methods.add_method("name", ...)` and its async and mut
/// forms in `impl LuaUserData for T` in src/lua/), as `class:name`.
fn registered_methods() -> Vec<String> {
    let imp = regex::Regex::new(r"(?m)^impl LuaUserData for (\w+) \{").unwrap();
    let add = regex::Regex::new(r#"\.add_(?:async_)?method(?:_mut)?\(\s*"(\w+)""#).unwrap();
    let mut out = Vec::new();
    for e in std::fs::read_dir(util::repo().join("src/lua")).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap();
        let starts: Vec<(usize, String)> =
            imp.captures_iter(&text).map(|c| (c.get(0).unwrap().start(), c[1].to_string())).collect();
        for (i, (at, ty)) in starts.iter().enumerate() {
            // the impl block: up to the next item at column 0 that is not a closing brace
            let rest = &text[*at..];
            let end = rest.find("\n}\n").map(|e| e + 2).unwrap_or(rest.len());
            let end = starts.get(i + 1).map(|(n, _)| (n - at).min(end)).unwrap_or(end);
            let Some((_, class, _)) = HANDLES.iter().find(|(t, _, _)| t == ty) else {
                panic!(
                    "{}: the handle type {ty} is not in HANDLES of tests/it/ship.rs: add it (and its stubs)",
                    e.path().display()
                );
            };
            for c in add.captures_iter(&rest[..end]) {
                out.push(format!("{class}:{}", &c[1]));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The methods the stubs declare on each class (`---@class cellsci.kernel.Kernel` ... `local Kernel = {}`
/// ... `function Kernel:execute(code, opts)`), as `class:name`, for the classes of HANDLES.
fn stubbed_methods() -> Vec<String> {
    let class = regex::Regex::new(r"^---@class cellsci\.([\w.]+)").unwrap();
    let local = regex::Regex::new(r"^local (\w+) = \{\}").unwrap();
    let method = regex::Regex::new(r"^function (\w+):(\w+)\s*\(").unwrap();
    let mut out = Vec::new();
    for (name, _) in cellsci::lua::MODULES {
        let text = std::fs::read_to_string(util::repo().join(format!("stdlib/meta/{name}.lua"))).unwrap();
        let (mut last, mut vars) = (None::<String>, std::collections::HashMap::new());
        for line in text.lines() {
            if let Some(c) = class.captures(line) {
                last = Some(c[1].to_string());
            } else if let Some(c) = local.captures(line) {
                vars.insert(c[1].to_string(), last.clone().unwrap_or_default());
            } else if let Some(c) = method.captures(line) {
                let cls = vars.get(&c[1]).cloned().unwrap_or_default();
                if HANDLES.iter().any(|(_, k, _)| *k == cls) {
                    out.push(format!("{cls}:{}", &c[2]));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The handles' methods, like the modules' functions: every method a handle type registers has a stub and
/// every stubbed method exists. The list read from the source is checked against live handles (a kernel
/// and a pool of the test venv included), so the parse cannot miss what a script can call.
#[test]
fn the_type_stubs_describe_exactly_the_methods_of_the_handles() {
    let real = registered_methods();
    assert!(real.contains(&"kernel.Kernel:execute".to_string()) && real.len() > 30, "{real:?}");
    let d = util::tempdir();
    let mut lua = format!(
        "local d, py = {:?}, {:?}\nlocal bad = {{}}\n",
        d.path().display().to_string(),
        test_python().display().to_string()
    );
    for (_, class, make) in HANDLES {
        let names: Vec<String> =
            real.iter().filter_map(|m| m.strip_prefix(&format!("{class}:"))).map(|n| format!("{n:?}")).collect();
        lua.push_str(&format!(
            "do\n  local h = {make}\n  for _, m in ipairs({{ {} }}) do\n    local ok, f = pcall(function() return h[m] end)\n    \
             if not ok or type(f) ~= 'function' then bad[#bad + 1] = '{class}:' .. m end\n  end\n  \
             if h.shutdown then h:shutdown() end\nend\n",
            names.join(", ")
        ));
    }
    lua.push_str("print(table.concat(bad, ' '))\n");
    let script = util::write(d.path(), "handles.lua", &lua);
    let out = util::cellsci(d.path()).arg("script").arg(&script).output().unwrap();
    assert_eq!(util::ok(&out).trim(), "", "methods read from src/lua/ that a live handle does not have");

    let stubs = stubbed_methods();
    let missing: Vec<&String> = real.iter().filter(|f| !stubs.contains(f)).collect();
    let stale: Vec<&String> = stubs.iter().filter(|f| !real.contains(f)).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "registered but not in stdlib/meta: {missing:?}\nin stdlib/meta but not registered: {stale:?}"
    );
}

/// `cellsci scripts export DIR` writes a `.luarc.json` beside the stubs, so LuaLS / EmmyLua opened on DIR
/// knows the API (Lua 5.4, the stubs as a library, the host's modules as known globals of require).
#[test]
fn scripts_export_writes_a_luarc_that_points_at_the_stubs() {
    let d = util::tempdir();
    util::ok(&util::cellsci(d.path()).args(["scripts", "export", "mine"]).output().unwrap());
    let text = std::fs::read_to_string(d.path().join("mine/.luarc.json")).unwrap();
    let rc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(rc["runtime"]["version"], "Lua 5.4", "{rc:#}");
    let libs: Vec<&str> = rc["workspace"]["library"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(libs, ["stdlib/meta"], "{rc:#}");
    assert!(d.path().join("mine").join(libs[0]).join("llm.lua").is_file());
    // the repository's own .luarc.json says the same, for editing stdlib/ and scripts/ here
    let own: Value = serde_json::from_str(&std::fs::read_to_string(util::repo().join(".luarc.json")).unwrap()).unwrap();
    assert_eq!(own, rc);
}

/// StyLua: STYLUA, else PATH or ~/.cargo/bin (`.ci/run` installs it with cargo when missing).
fn stylua() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("STYLUA") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin"));
    std::env::split_paths(&path).chain(home).map(|d| d.join("stylua")).find(|p| p.is_file())
}

/// The bundled Lua is formatted as stylua.toml says (run `stylua stdlib scripts` after editing).
#[test]
fn the_bundled_lua_is_formatted_with_stylua() {
    let Some(stylua) = stylua() else {
        return skip_unless_ci("no stylua (cargo install stylua --features lua54, as .ci/run does, or set STYLUA)");
    };
    let out = Command::new(&stylua)
        .current_dir(util::repo())
        .args(["--check", "--output-format", "summary", "stdlib", "scripts"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "these Lua files are not formatted as stylua.toml says (run `stylua stdlib scripts`):\n{}",
        util::text(&out)
    );
}

/// The project `cellsci init` writes is a working start: with phase 1's output put where its config says,
/// the key in OPENAI_API_KEY and the endpoint set (here a loopback fake of an OpenAI-compatible server),
/// `run --use-idea` goes to a met criterion, and the prompt sent is the project's own (edited) file.
#[test]
fn an_init_project_runs_with_its_own_prompt_files() {
    use crate::pipeline::{generation_reply, kind_of, metrics_cell, Kind};
    use crate::util::fake_llm::{FakeLlm, Reply};

    let d = util::tempdir();
    util::ok(&util::cellsci(d.path()).args(["init", "proj"]).output().unwrap());
    let proj = d.path().join("proj");
    let stage1 = proj.join("results/MY_DATASET/data_analysis/reference/20260101_000000");
    util::write(&stage1, "REFERENCE_DATA.h5", "not really hdf5");
    util::write(&stage1, "idea.json", r#"{"ideas": [{"title": "Dose matters", "description": "Model the dose."}]}"#);
    // the user's edit of the generation prompt, which the run must send
    let gen = proj.join("prompts/generation.yaml");
    let text = std::fs::read_to_string(&gen).unwrap();
    let text = text.replacen("system: |\n", "system: |\n  Project marker: init-7f3a.\n", 1);
    assert!(text.contains("init-7f3a"), "the bundled generation prompt starts with a `system: |` block");
    std::fs::write(&gen, text).unwrap();

    let srv = FakeLlm::start();
    let seen: std::sync::Arc<std::sync::Mutex<Vec<Value>>> = Default::default();
    let seen2 = seen.clone();
    let reply = generation_reply(&[("T1", &metrics_cell(0.8))]);
    srv.set_responder(move |req| {
        seen2.lock().unwrap().push(req.clone());
        match kind_of(req) {
            Kind::Generation => Reply::text(&reply),
            Kind::Strategy => Reply::text("Fit a dose-response baseline and one better model."),
            Kind::Report => Reply::text("The better model wins on every fold."),
            Kind::Fix => Reply::text("{}"),
        }
    });
    let cfg_path = proj.join("generate_execution_config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["llm"]["base_url"] = Value::String(srv.url());
    cfg["exec"]["python"] = Value::String(test_python().display().to_string());
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();

    let out = util::cellsci(d.path())
        .env("OPENAI_API_KEY", "sk-test-INIT0123456789")
        .args(["-c", "proj/generate_execution_config.json", "run", "--use-idea"])
        .output()
        .unwrap();
    let so = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    assert!(so.contains("[SUCCESS] Success threshold met") && so.contains("[CHECK] better | PCC: 0.8000"), "{so}");
    let archived: Vec<PathBuf> = std::fs::read_dir(proj.join("results/MY_DATASET/generate_execution/prompt"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("prompt_run_"))
        .collect();
    assert_eq!(archived.len(), 1, "{so}");
    assert!(archived[0].join("experiment_report.md").is_file());
    let reqs = seen.lock().unwrap();
    let generation = reqs.iter().find(|r| kind_of(r) == Kind::Generation).expect("a generation request");
    assert!(generation["messages"][0]["content"].as_str().unwrap().contains("Project marker: init-7f3a."));
    assert!(!util::text(&out).contains("sk-test-INIT0123456789"), "the key is never printed");
}

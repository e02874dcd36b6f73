//! Benchmarks of the LLM engine (run: `cargo bench --bench llm`):
//! - extraction time of `llm.extract_json` for a 2 MB reply (strict JSON in a fence, and a Python
//!   dict literal that goes through the normalizer);
//! - requests per second through the loopback fake server with 16 concurrent Lua coroutines
//!   (`task.all`), plain and streamed, everything in process as `cellsci script` runs it.
#[path = "../tests/it/util/fake_llm.rs"]
mod fake_llm;

use std::time::{Duration, Instant};

use serde_json::json;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn big_reply(python: bool) -> String {
    let code = "for i in range(10):\n    x = {'a': [i, i * 2]}\n    print(f\"{i}: {x}\")\n".repeat(900);
    let cells: Vec<serde_json::Value> =
        (0..30).map(|i| json!({"id": format!("c{i}"), "name": "n", "purpose": "p", "code": code})).collect();
    let body = serde_json::to_string_pretty(&json!({"cells": cells, "hypergraph": {"hyperedges": []}})).unwrap();
    let body = if python {
        // a Python literal: single quotes, True/None, raw newlines in strings, trailing commas
        body.replace("\\n", "\n").replace("\"hyperedges\": []", "'hyperedges': [], 'ok': True, 'x': None,")
    } else {
        body
    };
    format!("<think>\nLet me plan {{the cells}} first...\n</think>\nHere is the notebook:\n```json\n{body}\n```\nDone!")
}

fn bench_extract() {
    for python in [false, true] {
        let text = big_reply(python);
        let mut times = Vec::new();
        for _ in 0..15 {
            let t = Instant::now();
            let v = cellsci::llm::extract::extract_json(&text).expect("extracts");
            times.push(t.elapsed());
            assert_eq!(v["cells"].as_array().map(Vec::len), Some(30));
        }
        println!(
            "extract_json, {:.2} MB reply ({}): median {:.1} ms",
            text.len() as f64 / 1e6,
            if python { "Python literal, normalizer path" } else { "strict JSON in a fence" },
            median(times).as_secs_f64() * 1e3
        );
    }
}

fn bench_rps(stream: bool) {
    let srv = fake_llm::FakeLlm::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = json!({"llm": {"model": "fake", "base_url": srv.url(), "api_key": "sk-bench-000000000000",
                             "max_concurrency": 16, "stream": stream}});
    std::fs::write(dir.path().join("cfg.json"), cfg.to_string()).unwrap();
    let per = 100;
    let script = dir.path().join("b.lua");
    std::fs::write(
        &script,
        format!(
            r#"
            local llm, task = require("llm"), require("task")
            local fs = {{}}
            for i = 1, 16 do
              fs[i] = function()
                for j = 1, {per} do assert(llm.chat{{prompt = "q" .. i .. "/" .. j, retry = false}}) end
              end
            end
            task.all(fs)
            "#
        ),
    )
    .unwrap();
    let config = cellsci::config::load(&dir.path().join("cfg.json")).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let local = tokio::task::LocalSet::new();
    let elapsed = local.block_on(&rt, async {
        let lua =
            cellsci::lua::Runtime::new(cellsci::lua::ctx::HostCtx::new(Some(std::sync::Arc::new(config)))).unwrap();
        let t = Instant::now();
        lua.run_file(&script, &[]).await.unwrap();
        t.elapsed()
    });
    let n = 16 * per;
    assert_eq!(srv.requests().len(), n);
    println!(
        "16 coroutines x {per} chats ({}): {n} requests in {:.2} s = {:.0} requests/s",
        if stream { "streamed" } else { "plain" },
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
}

fn main() {
    bench_extract();
    bench_rps(false);
    bench_rps(true);
}

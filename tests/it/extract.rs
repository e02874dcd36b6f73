//! Tests for the extract area: `llm.extract_json` as a script sees it (values, error kinds), on a
//! reply as the fake server sends it.
use crate::util::fake_llm::FakeLlm;
use crate::util::{self, tempdir};

#[test]
fn extract_json_from_a_script() {
    let dir = tempdir();
    util::write(
        dir.path(),
        "t.lua",
        r#"
        local llm = require("llm")
        local text = "<think>maybe {\"draft\": 1}</think>\nSure:\n```json\n{'cells': [{'id': 'c1', 'code': '''x = 1\nprint(x)'''," ..
                     " 'ok': True, 'none': None,}], 'n': NaN}\n```\nDone."
        local v, err = llm.extract_json(text)
        assert(v, tostring(err))
        assert(v.cells[1].id == "c1" and v.cells[1].code == "x = 1\nprint(x)" and v.cells[1].ok == true)
        assert(v.cells[1].none == nil and v.n ~= v.n)
        local list = assert(llm.extract_json("[1, 2, 3]"))
        assert(#list == 3)
        local none, e1 = llm.extract_json("I could not do it.")
        assert(none == nil and e1.kind == "no_json", tostring(e1))
        local cut, e2 = llm.extract_json("```json\n{\"cells\": [{\"id\": ")
        assert(cut == nil and e2.kind == "truncated" and e2.message:find("max_tokens"), tostring(e2))
        local ok, msg = pcall(llm.extract_json, 42)
        assert(not ok and tostring(msg):find("expected the reply text"), tostring(msg))
        print("OK")
        "#,
    );
    let out = util::cellsci(dir.path()).args(["script", "t.lua"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
}

#[test]
fn extract_json_from_a_real_reply() {
    let srv = FakeLlm::start();
    srv.push_reply("Here is the fix:\n```json\n{\"edits\": [{\"cell_index\": 2, \"source\": \"import numpy as np\nx = np.zeros(3)\"}]}\n```");
    let dir = tempdir();
    util::write(dir.path(), "cfg.json", &serde_json::json!({"llm": {"model": "m", "base_url": srv.url()}}).to_string());
    util::write(
        dir.path(),
        "t.lua",
        r#"
        local llm = require("llm")
        local r = assert(llm.chat{prompt = "fix it"})
        local v = assert(llm.extract_json(r.text))
        assert(v.edits[1].cell_index == 2 and v.edits[1].source:find("np.zeros", 1, true))
        "#,
    );
    let out = util::cellsci(dir.path()).args(["--config", "cfg.json", "script", "t.lua"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
}

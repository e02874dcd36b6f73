#!/usr/bin/env bash
# Re-record the demo's cassette: serve the replies in replies/ from a loopback server, run the pipeline
# against it with --record, and keep the cassette. Needs python3 (standard library only) and a kernel with
# numpy and h5py (the config provisions one). CELLSCI=path/to/cellsci uses that binary instead of cargo run.
set -euo pipefail
cd "$(dirname "$0")"
port=8765
python3 serve_replies.py "$port" &
server=$!
trap 'kill $server 2>/dev/null' EXIT
sleep 0.5
# The same config without "replay", so requests really go to the server.
python3 - <<'PY'
import json
c = json.load(open("generate_execution_config.json"))
c["llm"].pop("replay", None)
json.dump(c, open("record_config.json", "w"), indent=2)
PY
rm -rf results
rm -f cassette.jsonl # --record appends to an existing cassette
${CELLSCI:-cargo run --quiet --release --} -c record_config.json --record cassette.jsonl run --use-idea
rm -f record_config.json
echo "recorded $(wc -l < cassette.jsonl) exchanges to examples/demo/cassette.jsonl"

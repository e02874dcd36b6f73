"""A tiny OpenAI-compatible server on 127.0.0.1 that answers with the files in replies/, in name order.

Used once to record the demo's cassette (see record.sh); the demo itself replays the cassette and needs no
server. Standard library only.
"""
import http.server
import json
import pathlib
import sys

REPLIES = sorted(p for p in (pathlib.Path(__file__).parent / "replies").iterdir() if p.suffix == ".txt")
state = {"next": 0}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        request = json.loads(self.rfile.read(length) or b"{}")
        i = min(state["next"], len(REPLIES) - 1)
        state["next"] += 1
        text = REPLIES[i].read_text()
        body = {
            "id": f"demo-{i}", "object": "chat.completion", "model": request.get("model", "demo"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": sum(len(m.get("content", "")) // 4 for m in request.get("messages", [])),
                      "completion_tokens": len(text) // 4,
                      "total_tokens": 0},
        }
        body["usage"]["total_tokens"] = body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        print(f"served {REPLIES[i].name}", file=sys.stderr)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8765
    http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()

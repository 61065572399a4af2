"""A stand-in for your notification relay in docker-compose: prints every Alertmanager webhook.

It checks the bearer token (the same file Alertmanager reads) and logs each alert's status,
name and labels, one line per alert.
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

TOKEN = Path(sys.argv[1] if len(sys.argv) > 1 else "/run/secrets/webhook-token").read_text().strip()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.send_response(401)
            self.end_headers()
            return
        payload = json.loads(body)
        for alert in payload.get("alerts", []):
            labels = ",".join(f"{k}={v}" for k, v in sorted(alert["labels"].items()))
            print(f"{self.path} {alert['status']:8} {labels}", flush=True)
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()

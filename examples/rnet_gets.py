"""Fifty async GETs with rnet against an in-process HTTP server; exit after the first answer."""

from __future__ import annotations

import asyncio
import http.server
import threading

import rnet

SERVICES = ()
TIMEOUT = 30.0


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"x" * 10000
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


async def main() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    client = rnet.Client()
    gets = [asyncio.ensure_future(client.get(url)) for _ in range(50)]
    await asyncio.wait(gets, return_when=asyncio.FIRST_COMPLETED)

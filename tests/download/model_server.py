#!/usr/bin/env python3
"""Loopback HTTP server for the download test: serves FILE as /ggml-NAME.bin for every
NAME=FILE argument, with byte ranges (bytes=N-), and variants under path prefixes:
  /redirect/X  302 to /X
  /norange/X   ignores Range (always 200 with the whole file)
  /cut/X       announces the whole length but closes after half the bytes
Anything else is 404. Prints the port on stdout; logs "PATH RANGE" per request to LOG.
usage: model_server.py LOG NAME=FILE [NAME=FILE ...]"""
import http.server
import sys

LOG = sys.argv[1]
FILES = dict(arg.split("=", 1) for arg in sys.argv[2:])


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        with open(LOG, "a") as log:
            log.write(f"{self.path} {self.headers.get('Range', '-')}\n")
        path = self.path
        mode = ""
        for prefix in ("/redirect", "/norange", "/cut"):
            if path.startswith(prefix + "/"):
                mode, path = prefix[1:], path[len(prefix):]
        if mode == "redirect":
            self.send_response(302)
            self.send_header("Location", path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        name = path[len("/ggml-"):-len(".bin")] if path.startswith("/ggml-") and path.endswith(".bin") else None
        if name not in FILES:
            body = b"not found\n"
            self.send_response(404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        data = open(FILES[name], "rb").read()
        start = 0
        ranged = self.headers.get("Range")
        if ranged and mode != "norange":
            start = int(ranged.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if mode == "cut":
            self.wfile.write(data[start:start + (len(data) - start) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data[start:])


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()

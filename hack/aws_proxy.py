#!/usr/bin/env python3
"""A fault-injecting reverse proxy between the operator and moto, for tests.

    python3 hack/aws_proxy.py --listen-port 0 --upstream http://127.0.0.1:MOTO_PORT

Standard library only. Prints the port it listens on as the first line of
stdout (so `--listen-port 0` works), then forwards every request (method,
path, query, headers, body) to the upstream and relays the response.

Each request's AWS operation is identified from `X-Amz-Target`
(JSON protocol: `secretsmanager.CreateSecret` -> `CreateSecret`), or else from
the `Action` parameter (query protocol, form body or query string); its
service from the SigV4 credential scope in `Authorization`, or else from the
target's prefix. Requests with neither count as `Unknown`.

Control API (never forwarded), all JSON:

    GET    /_proxy/calls            {"Operation": count} of calls that reached
                                    the proxy, faulted or not
    GET    /_proxy/calls?forwarded=1  the same, of calls forwarded upstream
           (add by=service for per-service counts, by=region for
           "region/Operation" keys (SigV4 signing region), by=qualified for
           "service.Operation" keys)
    POST   /_proxy/reset            clears counts and faults
    POST   /_proxy/fault            adds a fault rule, e.g.
           {"operation": "CreateAlias", "count": 1, "kind": "error",
            "code": "InternalFailure", "status": 500}
    GET    /_proxy/faults           lists active rules
    DELETE /_proxy/fault            clears faults

A rule applies to the next `count` calls of `operation` ("*" = any; count -1
= until cleared; optional "service" and "region" (the SigV4 signing region)
narrow it; optional "probability" (0 to 1) makes it apply to that share of
the matching calls at random, a use counted only when it applies; a call it
passes over may still match a later rule). When several rules match, the
oldest applies. Kinds:

    error     answer an AWS error (default 500 InternalFailure), not forwarded
    throttle  the same with 400 ThrottlingException
    drop      close the connection without answering, not forwarded
    delay     sleep "seconds", then forward
    late      forward at once, then hold the answer back "seconds": a
              response that describes the state before later writes
    after     forward (the write happens), then answer an error (default 500
              InternalFailure): a response lost after a successful write

Errors are JSON (`{"__type": code, "message": "injected fault"}`,
`x-amzn-ErrorType`, application/x-amz-json-1.1), or the query protocol's XML
for requests identified by `Action`. Bodies are never logged; per-request
logging only with --verbose.
"""

import argparse
import http.client
import json
import random
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CONTROL_PREFIX = "/_proxy/"
KINDS = ("error", "throttle", "drop", "delay", "late", "after")
# Services whose X-Amz-Target prefix is not their signing name.
TARGET_SERVICES = {
    "TrentService": "kms",
    "AmazonSQS": "sqs",
    "secretsmanager": "secretsmanager",
}
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "expect",
    "content-length",
}


class State:
    """Counters and fault rules, shared by all handler threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls = {}  # (service, operation) -> count
        self.forwarded = {}
        self.faults = []

    def reset(self):
        with self.lock:
            self.calls = {}  # (service, operation) -> count
            self.forwarded = {}
            self.faults = []

    def count(self, table, service, operation, region=None):
        with self.lock:
            key = (service, operation, region)
            table[key] = table.get(key, 0) + 1

    def snapshot(self, forwarded, by):
        with self.lock:
            table = dict(self.forwarded if forwarded else self.calls)
        out = {}
        for (service, operation, region), n in table.items():
            if by == "service":
                key = service
            elif by == "region":
                key = f"{region}/{operation}"
            elif by == "qualified":
                key = f"{service}.{operation}"
            else:
                key = operation
            out[key] = out.get(key, 0) + n
        return out

    def add_fault(self, rule):
        with self.lock:
            self.faults.append(rule)

    def clear_faults(self):
        with self.lock:
            self.faults = []

    def take_fault(self, service, operation, region=None):
        """The oldest matching rule, with one use consumed; or None."""
        with self.lock:
            for rule in self.faults:
                if rule["operation"] not in ("*", operation):
                    continue
                if rule.get("service") not in (None, service):
                    continue
                if rule.get("region") not in (None, region):
                    continue
                if "probability" in rule and random.random() >= rule["probability"]:
                    continue
                if rule["count"] > 0:
                    rule["count"] -= 1
                    if rule["count"] == 0:
                        self.faults.remove(rule)
                return dict(rule)
            return None

    def list_faults(self):
        with self.lock:
            return [dict(r) for r in self.faults]


def parse_fault(spec):
    """Validates a fault rule from the control API; raises ValueError."""
    if not isinstance(spec, dict):
        raise ValueError("fault must be a JSON object")
    operation = spec.get("operation")
    if not isinstance(operation, str) or not operation:
        raise ValueError('"operation" is required ("*" matches all)')
    kind = spec.get("kind", "error")
    if kind not in KINDS:
        raise ValueError(f'"kind" must be one of {", ".join(KINDS)}')
    count = spec.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or (count < 1 and count != -1):
        raise ValueError('"count" must be a positive integer or -1 (until cleared)')
    rule = {"operation": operation, "kind": kind, "count": count}
    if spec.get("service") is not None:
        rule["service"] = str(spec["service"])
    if spec.get("region") is not None:
        rule["region"] = str(spec["region"])
    if spec.get("probability") is not None:
        p = spec["probability"]
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p <= 1:
            raise ValueError('"probability" must be a number from 0 to 1')
        rule["probability"] = float(p)
    if kind in ("delay", "late"):
        seconds = spec.get("seconds")
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
            raise ValueError(f'"{kind}" needs "seconds" >= 0')
        rule["seconds"] = float(seconds)
    elif kind in ("error", "throttle", "after"):
        default_code, default_status = (
            ("ThrottlingException", 400) if kind == "throttle" else ("InternalFailure", 500)
        )
        code = spec.get("code") or default_code
        status = spec.get("status") or default_status
        if not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError('"status" must be an HTTP status code')
        rule["code"] = str(code)
        rule["status"] = status
    return rule


def signing_region(headers):
    """The region of the SigV4 credential scope, or None."""
    auth = headers.get("Authorization", "")
    if "Credential=" not in auth:
        return None
    scope = auth.split("Credential=", 1)[1].split(",", 1)[0].strip().split("/")
    return scope[2] if len(scope) >= 5 else None


def identify(headers, path, body):
    """(service, operation, protocol) of an AWS request."""
    service = None
    auth = headers.get("Authorization", "")
    marker = "Credential="
    if marker in auth:
        scope = auth.split(marker, 1)[1].split(",", 1)[0].strip().split("/")
        if len(scope) >= 5:
            service = scope[3]
    target = headers.get("X-Amz-Target")
    if target:
        prefix, _, operation = target.rpartition(".")
        if not service:
            service = TARGET_SERVICES.get(prefix, prefix or "unknown")
        return service, operation or "Unknown", "json"
    action = None
    query = urllib.parse.urlsplit(path).query
    if query:
        action = urllib.parse.parse_qs(query).get("Action", [None])[0]
    ctype = headers.get("Content-Type", "")
    if not action and body and "x-www-form-urlencoded" in ctype:
        try:
            form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
            action = form.get("Action", [None])[0]
        except ValueError:
            action = None
    if action:
        return service or "unknown", action, "query"
    return service or "unknown", "Unknown", "json"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as SDK clients expect
    server_version = "aws-proxy"
    sys_version = ""

    # Set on the class by main().
    state = None
    upstream = None  # urllib.parse.SplitResult
    timeout_s = 60.0
    verbose = False

    def log_message(self, format, *args):
        if self.verbose:
            sys.stderr.write("aws-proxy: " + (format % args) + "\n")

    def log_request(self, code="-", size="-"):
        pass  # logged in handle_any when verbose

    def note(self, what):
        if self.verbose:
            path = urllib.parse.urlsplit(self.path).path  # no query: it may carry values
            sys.stderr.write(f"aws-proxy: {self.command} {path} {what}\n")

    # Every method goes through one handler.
    def do_GET(self):
        self.handle_any()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = do_GET

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers, up to the empty line.
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline(65537)  # CRLF after the chunk
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def handle_any(self):
        try:
            body = self.read_body()
        except (ValueError, OSError):
            self.close_connection = True
            self.send_error(400, "bad request body")
            return
        if self.path.startswith(CONTROL_PREFIX):
            self.control(body)
            return
        service, operation, protocol = identify(self.headers, self.path, body)
        region = signing_region(self.headers)
        self.state.count(self.state.calls, service, operation, region)
        rule = self.state.take_fault(service, operation, region)
        kind = rule["kind"] if rule else None
        if kind:
            self.note(f"{service}.{operation}: injecting {kind}")
        else:
            self.note(f"{service}.{operation}")

        if kind in ("error", "throttle"):
            self.send_aws_error(rule, protocol)
            return
        if kind == "drop":
            self.close_connection = True
            return  # the connection closes without a response
        if kind == "delay":
            time.sleep(rule["seconds"])

        try:
            status, reason, headers, resp_body = self.forward(body, service, operation)
        except (OSError, http.client.HTTPException) as e:
            self.note(f"upstream failed: {type(e).__name__}")
            self.send_json_error(502, "ProxyUpstreamError", f"upstream failed: {type(e).__name__}")
            return
        if kind == "after":
            self.send_aws_error(rule, protocol)
            return
        if kind == "late":
            time.sleep(rule["seconds"])
        self.relay(status, reason, headers, resp_body)

    def forward(self, body, service, operation):
        up = self.upstream
        conn_cls = http.client.HTTPSConnection if up.scheme == "https" else http.client.HTTPConnection
        conn = conn_cls(up.hostname, up.port, timeout=self.timeout_s)
        try:
            path = up.path.rstrip("/") + self.path if up.path not in ("", "/") else self.path
            conn.putrequest(self.command, path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    conn.putheader(name, value)
            if body or self.command in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", str(len(body)))
            conn.putheader("Connection", "close")
            conn.endheaders(body or None)
            self.state.count(self.state.forwarded, service, operation, signing_region(self.headers))
            resp = conn.getresponse()
            resp_body = resp.read()
            return resp.status, resp.reason, resp.getheaders(), resp_body
        finally:
            conn.close()

    def relay(self, status, reason, headers, body):
        self.send_response_only(status, reason)
        no_body = self.command == "HEAD" or status in (204, 304) or 100 <= status < 200
        upstream_length = None
        for name, value in headers:
            lname = name.lower()
            if lname == "content-length":
                upstream_length = value
            if lname in HOP_BY_HOP:
                continue
            self.send_header(name, value)
        if self.command == "HEAD":
            if upstream_length is not None:
                self.send_header("Content-Length", upstream_length)
        elif not no_body:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not no_body:
            self.wfile.write(body)

    def send_aws_error(self, rule, protocol):
        code, status = rule["code"], rule["status"]
        if protocol == "query":
            request_id = str(uuid.uuid4())
            body = (
                '<?xml version="1.0"?>\n<ErrorResponse><Error>'
                f"<Type>{'Receiver' if status >= 500 else 'Sender'}</Type>"
                f"<Code>{code}</Code><Message>injected fault</Message>"
                f"</Error><RequestId>{request_id}</RequestId></ErrorResponse>"
            ).encode()
            self.send_body(status, body, "text/xml", {"x-amzn-RequestId": request_id})
        else:
            self.send_json_error(status, code, "injected fault")

    def send_json_error(self, status, code, message):
        body = json.dumps({"__type": code, "message": message}).encode()
        self.send_body(
            status,
            body,
            "application/x-amz-json-1.1",
            {"x-amzn-ErrorType": code, "x-amzn-RequestId": str(uuid.uuid4())},
        )

    def send_body(self, status, body, ctype, extra=None):
        self.send_response_only(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status, obj):
        self.send_body(status, json.dumps(obj, sort_keys=True).encode() + b"\n", "application/json")

    def control(self, body):
        url = urllib.parse.urlsplit(self.path)
        what = url.path[len(CONTROL_PREFIX) :].rstrip("/")
        params = urllib.parse.parse_qs(url.query)
        method = self.command
        if what == "calls" and method == "GET":
            forwarded = params.get("forwarded", ["0"])[0] not in ("0", "", "false")
            by = params.get("by", ["operation"])[0]
            self.send_json(200, self.state.snapshot(forwarded, by))
        elif what == "reset" and method == "POST":
            self.state.reset()
            self.send_json(200, {"ok": True})
        elif what == "fault" and method == "POST":
            try:
                rule = parse_fault(json.loads(body or b"null"))
            except ValueError as e:  # json.JSONDecodeError is a ValueError
                self.send_json(400, {"error": str(e)})
                return
            self.state.add_fault(rule)
            self.send_json(200, {"ok": True, "fault": rule})
        elif what in ("fault", "faults") and method == "DELETE":
            self.state.clear_faults()
            self.send_json(200, {"ok": True})
        elif what == "faults" and method == "GET":
            self.send_json(200, self.state.list_faults())
        else:
            self.send_json(404, {"error": f"no control endpoint {method} {url.path}"})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--listen-host", default="127.0.0.1")
    p.add_argument("--listen-port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:5000")
    p.add_argument("--timeout", type=float, default=60.0, help="upstream timeout, seconds")
    p.add_argument("--verbose", action="store_true", help="log each request (never bodies)")
    p.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="exit when stdin closes (so the proxy dies with the process that started it)",
    )
    args = p.parse_args(argv)

    upstream = urllib.parse.urlsplit(args.upstream)
    if upstream.scheme not in ("http", "https") or not upstream.hostname:
        p.error("--upstream must be an http(s) URL")

    Handler.state = State()
    Handler.upstream = upstream
    Handler.timeout_s = args.timeout
    Handler.verbose = args.verbose

    server = ThreadingHTTPServer((args.listen_host, args.listen_port), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)

    if args.exit_on_stdin_eof:

        def watch_stdin():
            try:
                while sys.stdin.buffer.read(4096):
                    pass
            except OSError:
                pass
            server.shutdown()

        threading.Thread(target=watch_stdin, daemon=True).start()

    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Tests for hack/aws_proxy.py against a real moto server, through boto3.

    python3 hack/test_aws_proxy.py [-v]

Starts moto (`python3 -m moto.server`) and the proxy on free loopback ports,
and stops both at the end. Plain unittest; needs moto[server] and boto3.
"""

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import unittest
import urllib.error
import urllib.request
import uuid

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError

HERE = os.path.dirname(os.path.abspath(__file__))
PROXY = os.path.join(HERE, "aws_proxy.py")
REGION = "us-east-1"
# Exactly one attempt. (botocore's `max_attempts` counts retries *after* the
# first attempt, so max_attempts=1 would still retry once.)
NO_RETRIES = Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=10, connect_timeout=5)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(method, url, body=None, ok=True):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        if ok:
            raise
        return e.code, json.loads(e.read() or b"null")


def wait_until(what, fn, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if fn():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout}s")
        time.sleep(0.2)


moto = proxy = None
MOTO_URL = PROXY_URL = None


def setUpModule():
    global moto, proxy, MOTO_URL, PROXY_URL
    port = free_port()
    MOTO_URL = f"http://127.0.0.1:{port}"
    moto = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until("moto", lambda: urllib.request.urlopen(f"{MOTO_URL}/moto-api/data.json", timeout=2).status == 200)
    proxy = subprocess.Popen(
        [sys.executable, PROXY, "--listen-port", "0", "--upstream", MOTO_URL, "--exit-on-stdin-eof"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    first = proxy.stdout.readline().strip()
    if not first.isdigit():
        raise RuntimeError(f"proxy printed {first!r} instead of its port")
    PROXY_URL = f"http://127.0.0.1:{first}"
    wait_until("proxy", lambda: http_json("GET", f"{PROXY_URL}/_proxy/calls")[0] == 200)


def tearDownModule():
    for p in (proxy, moto):
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    if proxy is not None:
        proxy.stdin.close()
        proxy.stdout.close()


def client(service, endpoint, region=None):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=region or REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=NO_RETRIES,
    )


class ProxyTest(unittest.TestCase):
    def setUp(self):
        http_json("POST", f"{PROXY_URL}/_proxy/reset")
        self.sm = client("secretsmanager", PROXY_URL)  # through the proxy
        self.direct = client("secretsmanager", MOTO_URL)  # straight to moto
        self.prefix = f"proxy-test/{uuid.uuid4().hex[:10]}/"

    def calls(self, forwarded=False, by=None):
        q = []
        if forwarded:
            q.append("forwarded=1")
        if by:
            q.append(f"by={by}")
        return http_json("GET", f"{PROXY_URL}/_proxy/calls" + ("?" + "&".join(q) if q else ""))[1]

    def fault(self, **spec):
        status, body = http_json("POST", f"{PROXY_URL}/_proxy/fault", spec)
        self.assertEqual(status, 200, body)
        return body

    def exists(self, name):
        try:
            self.direct.describe_secret(SecretId=name)
            return True
        except ClientError as e:
            self.assertEqual(e.response["Error"]["Code"], "ResourceNotFoundException")
            return False

    def test_counts_and_forwards(self):
        name = self.prefix + "a"
        arn = self.sm.create_secret(Name=name, SecretString="v1")["ARN"]
        self.assertEqual(self.sm.describe_secret(SecretId=name)["ARN"], arn)
        self.assertEqual(self.calls(), {"CreateSecret": 1, "DescribeSecret": 1})
        self.assertEqual(self.calls(forwarded=True), {"CreateSecret": 1, "DescribeSecret": 1})
        self.assertEqual(self.calls(by="service"), {"secretsmanager": 2})
        self.assertEqual(
            self.calls(by="qualified"),
            {"secretsmanager.CreateSecret": 1, "secretsmanager.DescribeSecret": 1},
        )
        # Upstream errors are relayed as they are.
        with self.assertRaises(ClientError) as cm:
            self.sm.describe_secret(SecretId=self.prefix + "missing")
        self.assertEqual(cm.exception.response["Error"]["Code"], "ResourceNotFoundException")

    def test_error_fails_once_without_forwarding(self):
        name = self.prefix + "b"
        self.fault(operation="CreateSecret", count=1, kind="error", code="InternalFailure", status=500)
        with self.assertRaises(ClientError) as cm:
            self.sm.create_secret(Name=name, SecretString="v1")
        err = cm.exception.response
        self.assertEqual(err["Error"]["Code"], "InternalFailure")
        self.assertEqual(err["ResponseMetadata"]["HTTPStatusCode"], 500)
        self.assertFalse(self.exists(name), "a faulted call must not reach moto")
        self.sm.create_secret(Name=name, SecretString="v1")  # the fault is used up
        self.assertTrue(self.exists(name))
        self.assertEqual(self.calls()["CreateSecret"], 2)
        self.assertEqual(self.calls(forwarded=True)["CreateSecret"], 1)

    def test_after_writes_but_client_sees_error(self):
        name = self.prefix + "c"
        self.fault(operation="CreateSecret", count=1, kind="after")
        with self.assertRaises(ClientError) as cm:
            self.sm.create_secret(Name=name, SecretString="v1")
        self.assertEqual(cm.exception.response["Error"]["Code"], "InternalFailure")
        self.assertTrue(self.exists(name), "`after` forwards the write")
        with self.assertRaises(ClientError) as cm:
            self.sm.create_secret(Name=name, SecretString="v1")
        self.assertEqual(cm.exception.response["Error"]["Code"], "ResourceExistsException")
        self.assertEqual(self.calls(forwarded=True)["CreateSecret"], 2)

    def test_throttle(self):
        self.fault(operation="ListSecrets", count=1, kind="throttle")
        with self.assertRaises(ClientError) as cm:
            self.sm.list_secrets()
        self.assertEqual(cm.exception.response["Error"]["Code"], "ThrottlingException")
        self.assertEqual(cm.exception.response["ResponseMetadata"]["HTTPStatusCode"], 400)
        self.sm.list_secrets()
        self.assertEqual(self.calls(), {"ListSecrets": 2})
        self.assertEqual(self.calls(forwarded=True), {"ListSecrets": 1})

    def test_until_cleared_wildcard_and_service(self):
        self.fault(operation="*", count=-1, kind="error", code="ServiceUnavailable", status=503)
        for _ in range(3):
            with self.assertRaises(ClientError) as cm:
                self.sm.list_secrets()
            self.assertEqual(cm.exception.response["Error"]["Code"], "ServiceUnavailable")
        self.assertEqual(len(http_json("GET", f"{PROXY_URL}/_proxy/faults")[1]), 1)
        http_json("DELETE", f"{PROXY_URL}/_proxy/fault")
        self.assertEqual(http_json("GET", f"{PROXY_URL}/_proxy/faults")[1], [])
        self.sm.list_secrets()
        self.assertEqual(self.calls(), {"ListSecrets": 4})
        # A rule narrowed to a service leaves other services alone.
        self.fault(operation="*", service="kms", count=-1, kind="throttle")
        self.sm.list_secrets()
        kms = client("kms", PROXY_URL)
        with self.assertRaises(ClientError) as cm:
            kms.create_key()
        self.assertEqual(cm.exception.response["Error"]["Code"], "ThrottlingException")
        self.assertEqual(self.calls(by="service"), {"secretsmanager": 5, "kms": 1})

    def test_rules_apply_oldest_first(self):
        self.fault(operation="ListSecrets", count=1, kind="throttle")
        self.fault(operation="ListSecrets", count=1, kind="error")
        codes = []
        for _ in range(2):
            with self.assertRaises(ClientError) as cm:
                self.sm.list_secrets()
            codes.append(cm.exception.response["Error"]["Code"])
        self.assertEqual(codes, ["ThrottlingException", "InternalFailure"])
        self.sm.list_secrets()

    def test_drop_closes_connection(self):
        self.fault(operation="ListSecrets", count=1, kind="drop")
        with self.assertRaises((ConnectionClosedError, EndpointConnectionError)):
            self.sm.list_secrets()
        self.sm.list_secrets()
        self.assertEqual(self.calls(), {"ListSecrets": 2})
        self.assertEqual(self.calls(forwarded=True), {"ListSecrets": 1})

    def test_delay(self):
        self.fault(operation="ListSecrets", count=1, kind="delay", seconds=1)
        start = time.monotonic()
        self.sm.list_secrets()
        self.assertGreaterEqual(time.monotonic() - start, 1.0)
        start = time.monotonic()
        self.sm.list_secrets()
        self.assertLess(time.monotonic() - start, 1.0)
        self.assertEqual(self.calls(forwarded=True), {"ListSecrets": 2})

    def test_late_answers_with_the_state_before_later_writes(self):
        name = f"{self.prefix}late"
        self.fault(operation="ListSecrets", count=1, kind="late", seconds=1.5)
        listed = {}
        t = threading.Thread(
            target=lambda: listed.update(self.sm.list_secrets(Filters=[{"Key": "name", "Values": [name]}]))
        )
        t.start()
        time.sleep(0.5)  # the listing has been answered upstream, not yet relayed
        direct = client("secretsmanager", MOTO_URL)
        direct.create_secret(Name=name, SecretString="v")
        t.join()
        self.assertEqual(listed["SecretList"], [], "the late answer predates the write")
        self.assertEqual(len(self.sm.list_secrets(Filters=[{"Key": "name", "Values": [name]}])["SecretList"]), 1)

    def test_probability_faults_a_share_of_calls(self):
        self.fault(operation="ListSecrets", count=-1, kind="throttle", probability=0.5)
        failed = 0
        for _ in range(100):
            try:
                self.sm.list_secrets(MaxResults=1)
            except ClientError:
                failed += 1
        self.assertTrue(25 <= failed <= 75, failed)
        self.assertEqual(self.calls(), {"ListSecrets": 100})
        self.assertEqual(self.calls(forwarded=True), {"ListSecrets": 100 - failed})

    def test_faults_and_counts_by_region(self):
        self.fault(operation="ListSecrets", count=-1, kind="error", region="eu-west-3")
        far = client("secretsmanager", PROXY_URL, region="eu-west-3")
        with self.assertRaises(ClientError):
            far.list_secrets()
        self.sm.list_secrets()  # another region: not faulted
        self.assertEqual(
            self.calls(by="region"),
            {"eu-west-3/ListSecrets": 1, f"{self.sm.meta.region_name}/ListSecrets": 1},
        )

    def test_kms_and_sqs_targets(self):
        kms = client("kms", PROXY_URL)
        key = kms.create_key()["KeyMetadata"]["KeyId"]
        kms.create_alias(AliasName=f"alias/{self.prefix.strip('/').replace('/', '-')}", TargetKeyId=key)
        sqs = client("sqs", PROXY_URL)
        sqs.list_queues()
        self.assertEqual(
            self.calls(by="qualified"),
            {"kms.CreateKey": 1, "kms.CreateAlias": 1, "sqs.ListQueues": 1},
        )

    def test_query_protocol_and_chunked_body(self):
        # Query protocol: the operation comes from the form's Action.
        auth = "AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/sqs/aws4_request, SignedHeaders=host, Signature=0"
        conn = http.client.HTTPConnection("127.0.0.1", int(PROXY_URL.rsplit(":", 1)[1]), timeout=10)
        form = b"Action=ListQueues&Version=2012-11-05"
        conn.request(
            "POST",
            "/",
            body=form,
            headers={"Content-Type": "application/x-www-form-urlencoded", "Authorization": auth},
        )
        resp = conn.getresponse()
        self.assertEqual(resp.status, 200)
        self.assertIn(b"ListQueuesResponse", resp.read())
        # ... and a fault on it answers in the query protocol's XML.
        self.fault(operation="ListQueues", count=1, kind="throttle")
        conn.request(
            "POST",
            "/",
            body=form,
            headers={"Content-Type": "application/x-www-form-urlencoded", "Authorization": auth},
        )
        resp = conn.getresponse()
        self.assertEqual(resp.status, 400)
        self.assertIn(b"<Code>ThrottlingException</Code>", resp.read())
        # A chunked JSON request is de-chunked and forwarded (same keep-alive connection).
        conn.putrequest("POST", "/", skip_accept_encoding=True)
        conn.putheader("Content-Type", "application/x-amz-json-1.1")
        conn.putheader("X-Amz-Target", "secretsmanager.ListSecrets")
        conn.putheader(
            "Authorization", auth.replace("/sqs/", "/secretsmanager/")
        )
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        for piece in (b"{", b'"MaxResults"', b": 1}"):
            conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        conn.send(b"0\r\n\r\n")
        resp = conn.getresponse()
        self.assertEqual(resp.status, 200)
        self.assertIn("SecretList", json.loads(resp.read()))
        conn.close()
        self.assertEqual(self.calls(by="qualified"), {"sqs.ListQueues": 2, "secretsmanager.ListSecrets": 1})

    def test_reset_clears_counts_and_faults(self):
        self.sm.list_secrets()
        self.fault(operation="ListSecrets", count=-1, kind="throttle")
        http_json("POST", f"{PROXY_URL}/_proxy/reset")
        self.assertEqual(self.calls(), {})
        self.assertEqual(self.calls(forwarded=True), {})
        self.sm.list_secrets()  # the fault is gone
        self.assertEqual(self.calls(), {"ListSecrets": 1})

    def test_control_api_is_not_forwarded_and_validates(self):
        status, body = http_json("GET", f"{PROXY_URL}/_proxy/nope", ok=False)
        self.assertEqual(status, 404)
        for bad in (
            {"kind": "error"},
            {"operation": "X", "kind": "explode"},
            {"operation": "X", "count": 0},
            {"operation": "X", "kind": "delay"},
            {"operation": "X", "probability": 1.5},
        ):
            status, body = http_json("POST", f"{PROXY_URL}/_proxy/fault", bad, ok=False)
            self.assertEqual(status, 400, bad)
        self.assertEqual(self.calls(), {})
        self.assertEqual(self.calls(forwarded=True), {})


if __name__ == "__main__":
    unittest.main()

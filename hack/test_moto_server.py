"""Checks hack/moto_server.py's Secrets Manager patches against a real moto
server subprocess, with boto3. Plain unittest, no extra dependency:

    python3 hack/test_moto_server.py        (or: python3 -m pytest hack/test_moto_server.py -q)
"""

import json
import os
import socket
import subprocess
import sys
import time
import unittest
import urllib.request
import uuid

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

HERE = os.path.dirname(os.path.abspath(__file__))
LAMBDA = "arn:aws:lambda:us-east-1:123456789012:function:rotate"
DAY = 86400


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        port = free_port()
        cls.endpoint = f"http://127.0.0.1:{port}"
        cls.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "moto_server.py"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 30
        while True:
            try:
                cls.rotations()
                break
            except OSError:
                if time.time() > deadline or cls.proc.poll() is not None:
                    cls.tearDownClass()
                    raise RuntimeError("moto_server.py did not start")
                time.sleep(0.1)
        cls.sm = boto3.client(
            "secretsmanager",
            endpoint_url=cls.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(retries={"max_attempts": 0}),
        )

    @classmethod
    def tearDownClass(cls):
        cls.proc.terminate()
        try:
            cls.proc.wait(10)
        except subprocess.TimeoutExpired:
            cls.proc.kill()
            cls.proc.wait()

    @classmethod
    def rotations(cls):
        with urllib.request.urlopen(f"{cls.endpoint}/rotor-test/rotations", timeout=2) as r:
            return json.load(r)

    # helpers

    def create(self, value):
        name = f"t-{uuid.uuid4().hex[:12]}"
        arn = self.sm.create_secret(Name=name, SecretString=value)["ARN"]
        return arn

    def stages(self, arn):
        return self.sm.describe_secret(SecretId=arn)["VersionIdsToStages"]

    def current(self, arn):
        return next(v for v, s in self.stages(arn).items() if "AWSCURRENT" in s)

    def value(self, arn, **kw):
        return self.sm.get_secret_value(SecretId=arn, **kw)["SecretString"]

    def version_ids(self, arn):
        return {v["VersionId"] for v in self.sm.list_secret_version_ids(SecretId=arn)["Versions"]}

    def assertAbout(self, when, epoch):
        self.assertLess(abs(when.timestamp() - epoch), 5, f"{when} vs {epoch}")

    def assertError(self, code, fn, **kw):
        with self.assertRaises(ClientError) as e:
            fn(**kw)
        self.assertEqual(e.exception.response["Error"]["Code"], code)

    # tests

    def test_rotate_immediately_false_only_configures(self):
        arn = self.create(json.dumps({"username": "u", "password": "p0"}))
        before = self.current(arn)
        resp = self.sm.rotate_secret(
            SecretId=arn,
            ClientRequestToken=str(uuid.uuid4()),
            RotationLambdaARN=LAMBDA,
            RotationRules={"ScheduleExpression": "rate(10 days)", "Duration": "3h"},
            RotateImmediately=False,
        )
        self.assertEqual(resp["ARN"], arn)
        self.assertEqual(self.version_ids(arn), {before})
        self.assertEqual(self.stages(arn), {before: ["AWSCURRENT"]})
        self.assertEqual(json.loads(self.value(arn))["password"], "p0")
        d = self.sm.describe_secret(SecretId=arn)
        self.assertEqual(d["RotationRules"], {"ScheduleExpression": "rate(10 days)", "Duration": "3h"})
        self.assertTrue(d["RotationEnabled"])
        self.assertEqual(d["RotationLambdaARN"], LAMBDA)
        self.assertNotIn("LastRotatedDate", d)
        self.assertAbout(d["NextRotationDate"], time.time() + 10 * DAY)
        self.assertNotIn(arn, self.rotations())

    def test_rotate_immediately_runs_idempotent_rotations(self):
        arn = self.create(json.dumps({"username": "u", "password": "p0"}))
        v0 = self.current(arn)
        token_a = str(uuid.uuid4())
        rules = {"ScheduleExpression": "rate(12 hours)"}
        resp = self.sm.rotate_secret(
            SecretId=arn, ClientRequestToken=token_a, RotationLambdaARN=LAMBDA, RotationRules=rules
        )
        self.assertEqual(resp["VersionId"], token_a)
        self.assertEqual(self.version_ids(arn), {v0, token_a})
        self.assertEqual(self.current(arn), token_a)
        self.assertIn("AWSPREVIOUS", self.stages(arn)[v0])
        a = json.loads(self.value(arn, VersionStage="AWSCURRENT"))
        self.assertEqual(a["username"], "u")
        self.assertRegex(a["password"], r"^[A-Za-z0-9]{32}$")
        self.assertEqual(json.loads(self.value(arn))["password"], a["password"])  # no VersionStage
        d = self.sm.describe_secret(SecretId=arn)
        self.assertEqual(d["RotationRules"], rules)
        self.assertAbout(d["LastRotatedDate"], time.time())
        self.assertEqual(
            d["NextRotationDate"].timestamp() - d["LastRotatedDate"].timestamp(), 12 * 3600
        )
        self.assertEqual(self.rotations()[arn], 1)

        # The same token again is the same request: nothing new.
        resp = self.sm.rotate_secret(SecretId=arn, ClientRequestToken=token_a)
        self.assertEqual(resp["VersionId"], token_a)
        self.assertEqual(self.version_ids(arn), {v0, token_a})
        self.assertEqual(self.current(arn), token_a)
        self.assertEqual(json.loads(self.value(arn))["password"], a["password"])
        self.assertEqual(self.rotations()[arn], 1)

        # A different token rotates again, with the stored configuration.
        token_b = str(uuid.uuid4())
        self.sm.rotate_secret(SecretId=arn, ClientRequestToken=token_b)
        self.assertEqual(self.version_ids(arn), {v0, token_a, token_b})
        self.assertEqual(self.current(arn), token_b)
        self.assertIn("AWSPREVIOUS", self.stages(arn)[token_a])
        self.assertNotIn("AWSPREVIOUS", self.stages(arn)[v0])
        b = json.loads(self.value(arn, VersionStage="AWSCURRENT"))
        self.assertNotEqual(b["password"], a["password"])
        self.assertEqual(self.sm.describe_secret(SecretId=arn)["RotationRules"], rules)
        self.assertEqual(self.rotations()[arn], 2)

    def test_rotation_of_a_plain_string_and_without_token(self):
        arn = self.create("hunter2")
        v0 = self.current(arn)
        # SDKs always fill in ClientRequestToken; send a raw request without it.
        body = json.dumps({"SecretId": arn, "RotationLambdaARN": LAMBDA,
                           "RotationRules": {"AutomaticallyAfterDays": 7}}).encode()
        req = urllib.request.Request(f"{self.endpoint}/", data=body, headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "secretsmanager.RotateSecret",
            "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/"
                             "secretsmanager/aws4_request, SignedHeaders=host, Signature=x",
        })
        with urllib.request.urlopen(req, timeout=5) as r:
            new = json.load(r)["VersionId"]
        self.assertTrue(uuid.UUID(new))
        self.assertEqual(self.version_ids(arn), {v0, new})
        self.assertEqual(self.current(arn), new)
        self.assertRegex(self.value(arn, VersionStage="AWSCURRENT"), r"^[A-Za-z0-9]{32}$")
        d = self.sm.describe_secret(SecretId=arn)
        self.assertEqual(d["RotationRules"], {"AutomaticallyAfterDays": 7})
        self.assertEqual(d["NextRotationDate"].timestamp() - d["LastRotatedDate"].timestamp(), 7 * DAY)

    def test_cron_schedule_and_cancel(self):
        arn = self.create("x")
        rules = {"ScheduleExpression": "cron(0 4 ? * MON *)", "Duration": "2h"}
        self.sm.rotate_secret(SecretId=arn, RotationLambdaARN=LAMBDA, RotationRules=rules,
                              RotateImmediately=False)
        d = self.sm.describe_secret(SecretId=arn)
        self.assertEqual(d["RotationRules"], rules)
        self.assertNotIn("NextRotationDate", d)  # not computed for cron()
        self.sm.cancel_rotate_secret(SecretId=arn)
        d = self.sm.describe_secret(SecretId=arn)
        self.assertFalse(d["RotationEnabled"])
        self.assertEqual(d["RotationRules"], rules)

    def test_invalid_requests(self):
        arn = self.create("x")
        v0 = self.current(arn)
        for rules in (
            {"AutomaticallyAfterDays": 7, "ScheduleExpression": "rate(7 days)"},
            {"ScheduleExpression": "rate(1 hours)"},
            {"ScheduleExpression": "every day"},
            {"ScheduleExpression": "rate(1 day)", "Duration": "25h"},
        ):
            self.assertError("InvalidParameterException", self.sm.rotate_secret,
                             SecretId=arn, RotationLambdaARN=LAMBDA, RotationRules=rules)
        self.assertError("InvalidRequestException", self.sm.rotate_secret,
                         SecretId=arn, RotationRules={"AutomaticallyAfterDays": 1})
        self.assertError("ResourceNotFoundException", self.sm.rotate_secret,
                         SecretId="t-missing", RotationLambdaARN=LAMBDA)
        self.assertEqual(self.version_ids(arn), {v0})
        self.assertNotIn("RotationEnabled", self.sm.describe_secret(SecretId=arn))

    def test_pending_rotation_blocks_rotate_secret(self):
        arn = self.create("x")
        self.sm.put_secret_value(SecretId=arn, SecretString="y", VersionStages=["AWSPENDING"])
        self.assertError("InvalidRequestException", self.sm.rotate_secret,
                         SecretId=arn, RotationLambdaARN=LAMBDA)

    def test_list_secrets_pages_cover_each_match_once(self):
        tag = uuid.uuid4().hex[:8]
        arns = [self.sm.create_secret(Name=f"p-{tag}-{i}", SecretString="x",
                                      Tags=[{"Key": "page", "Value": tag}])["ARN"] for i in range(7)]
        self.sm.create_secret(Name=f"other-{tag}", SecretString="x")
        self.sm.delete_secret(SecretId=arns[0], RecoveryWindowInDays=7)

        def listed(**kw):
            seen, token = [], None
            while True:
                page = self.sm.list_secrets(Filters=[{"Key": "tag-value", "Values": [tag]}], MaxResults=3,
                                            **({"NextToken": token} if token else {}), **kw)
                self.assertLessEqual(len(page["SecretList"]), 3)
                seen += [s["ARN"] for s in page["SecretList"]]
                token = page.get("NextToken")
                if not token:
                    return seen

        self.assertEqual(listed(), arns[1:])
        self.assertEqual(listed(IncludePlannedDeletion=True), arns)
        self.assertEqual(self.sm.describe_secret(SecretId=arns[1])["Tags"],
                         next(s for s in self.sm.list_secrets(Filters=[{"Key": "tag-value", "Values": [tag]}])
                              ["SecretList"] if s["ARN"] == arns[1])["Tags"])

    def test_secrets_are_found_by_name_full_and_partial_arn(self):
        name = f"look-{uuid.uuid4().hex[:8]}"
        arn = self.sm.create_secret(Name=name, SecretString="x")["ARN"]
        partial = arn[:-7]
        for key in (name, arn, partial):
            self.assertEqual(self.sm.describe_secret(SecretId=key)["ARN"], arn, key)
        self.assertError("ResourceNotFoundException", self.sm.describe_secret, SecretId=arn[:-1] + "Z")
        self.assertError("ResourceExistsException", self.sm.create_secret, Name=name, SecretString="y")
        # A replica is stored under its ARN, and found by name and ARN too.
        self.sm.replicate_secret_to_regions(SecretId=arn, AddReplicaRegions=[{"Region": "us-west-2"}])
        west = boto3.client("secretsmanager", endpoint_url=self.endpoint, region_name="us-west-2",
                            aws_access_key_id="testing", aws_secret_access_key="testing")
        replica = arn.replace("us-east-1", "us-west-2")
        for key in (name, replica):
            self.assertEqual(west.describe_secret(SecretId=key)["ARN"], replica, key)
        self.sm.remove_regions_from_replication(SecretId=arn, RemoveReplicaRegions=["us-west-2"])
        self.sm.delete_secret(SecretId=partial, ForceDeleteWithoutRecovery=True)
        self.assertError("ResourceNotFoundException", self.sm.describe_secret, SecretId=name)

    def test_reset_still_works(self):
        arn = self.create("x")
        self.sm.rotate_secret(SecretId=arn, RotationLambdaARN=LAMBDA,
                              RotationRules={"ScheduleExpression": "rate(1 day)"})
        self.assertEqual(self.rotations()[arn], 1)
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            self.assertEqual(r.status, 200)
        self.assertError("ResourceNotFoundException", self.sm.describe_secret, SecretId=arn)
        self.assertEqual(self.rotations(), {})


# A provided.* function's bootstrap for the self-tests: Python speaking the
# Lambda Runtime API, rotating like a well-behaved function; fails setSecret
# on a token's first attempt when FAIL_SET_ONCE is set.
BOOTSTRAP = """#!%s
import json, os, sys, urllib.request
import boto3
api = os.environ["AWS_LAMBDA_RUNTIME_API"]
sm = boto3.client("secretsmanager", endpoint_url=os.environ["AWS_ENDPOINT_URL"],
                  region_name=os.environ["AWS_REGION"])
def post(path, body):
    req = urllib.request.Request(f"http://{api}/2018-06-01/runtime/{path}",
                                 data=json.dumps(body).encode(), method="POST")
    urllib.request.urlopen(req).read()
def handle(ev, headers):
    if "Step" not in ev:
        keys = ["AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                "AWS_LAMBDA_FUNCTION_VERSION", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "MY_VAR"]
        return {"echo": ev, "env": {k: os.environ.get(k) for k in keys},
                "deadline": headers["Lambda-Runtime-Deadline-Ms"]}
    sid, token, step = ev["SecretId"], ev["ClientRequestToken"], ev["Step"]
    meta = sm.describe_secret(SecretId=sid)
    stages = meta["VersionIdsToStages"][token]
    if "AWSCURRENT" in stages:
        return None
    assert meta["RotationEnabled"] and "AWSPENDING" in stages
    if step == "createSecret":
        try:
            sm.get_secret_value(SecretId=sid, VersionId=token, VersionStage="AWSPENDING")
        except sm.exceptions.ResourceNotFoundException:
            sm.put_secret_value(SecretId=sid, ClientRequestToken=token,
                                SecretString="rotated-" + token, VersionStages=["AWSPENDING"])
    elif step == "setSecret" and os.environ.get("FAIL_SET_ONCE"):
        marker = os.path.join(os.environ["LAMBDA_TASK_ROOT"], "failed-" + token)
        if not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("database unreachable")
    elif step == "finishSecret":
        current = next(v for v, s in meta["VersionIdsToStages"].items() if "AWSCURRENT" in s)
        sm.update_secret_version_stage(SecretId=sid, VersionStage="AWSCURRENT",
                                       MoveToVersionId=token, RemoveFromVersionId=current)
    return None
while True:
    r = urllib.request.urlopen(f"http://{api}/2018-06-01/runtime/invocation/next")
    rid = r.headers["Lambda-Runtime-Aws-Request-Id"]
    ev = json.loads(r.read())
    try:
        post(f"invocation/{rid}/response", handle(ev, r.headers))
    except Exception as e:
        post(f"invocation/{rid}/error", {"errorType": type(e).__name__, "errorMessage": str(e)})
""" % sys.executable


class _ProvidedFunctionTests:
    """(Added to MotoServerTest below, sharing its server.) RotateSecret with a moto function of a provided.* runtime runs its
    bootstrap through the emulated Runtime API, asynchronously."""

    def function(self, env=None):
        import io
        import zipfile

        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            info = zipfile.ZipInfo("bootstrap")
            info.external_attr = 0o755 << 16
            z.writestr(info, BOOTSTRAP)
        lam = boto3.client(
            "lambda", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
            config=Config(retries={"max_attempts": 0}),
        )
        iam = boto3.client(
            "iam", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )
        try:
            iam.create_role(RoleName="rotator", AssumeRolePolicyDocument=json.dumps({
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
                               "Action": "sts:AssumeRole"}]}))
        except iam.exceptions.EntityAlreadyExistsException:
            pass
        name = f"rotor-rotator-{uuid.uuid4().hex[:8]}"
        arn = lam.create_function(
            FunctionName=name, Runtime="provided.al2023", Handler="bootstrap",
            Role="arn:aws:iam::123456789012:role/rotator", Code={"ZipFile": buf.getvalue()},
            Timeout=10, Environment={"Variables": env or {}},
        )["FunctionArn"]
        return lam, arn

    def invocations(self, **query):
        q = "&".join(f"{k}={v}" for k, v in query.items())
        with urllib.request.urlopen(f"{self.endpoint}/rotor-test/invocations?{q}", timeout=5) as r:
            return json.load(r)

    def wait_rotated(self, arn, token, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.current(arn) == token:
                return
            time.sleep(0.1)
        self.fail(f"not rotated: {self.invocations(token=token)}")

    def test_rotate_secret_runs_the_bootstrap_after_returning(self):
        _, fn = self.function()
        arn = self.create("v1")
        old = self.current(arn)
        token = str(uuid.uuid4())
        out = self.sm.rotate_secret(SecretId=arn, RotationLambdaARN=fn, ClientRequestToken=token)
        self.assertEqual(out["VersionId"], token)
        self.wait_rotated(arn, token)
        self.assertEqual(self.value(arn, VersionStage="AWSCURRENT"), "rotated-" + token)
        self.assertIn("AWSPREVIOUS", self.stages(arn)[old])
        rows = self.invocations(token=token)
        self.assertEqual([r["step"] for r in rows], ["createSecret", "setSecret", "testSecret", "finishSecret"])
        self.assertTrue(all(r["outcome"] == "ok" for r in rows), rows)
        self.assertTrue(rows[0]["cold"])
        self.assertFalse(rows[1]["cold"], "the environment is kept warm")
        self.assertEqual(self.rotations().get(arn), 1)

    def test_failed_step_restarts_from_create_secret(self):
        _, fn = self.function({"FAIL_SET_ONCE": "1"})
        arn = self.create("v1")
        token = str(uuid.uuid4())
        self.sm.rotate_secret(SecretId=arn, RotationLambdaARN=fn, ClientRequestToken=token)
        self.wait_rotated(arn, token)
        rows = [(r["attempt"], r["step"], r["outcome"]) for r in self.invocations(token=token)]
        self.assertEqual(
            rows,
            [(1, "createSecret", "ok"), (1, "setSecret", "error"),
             (2, "createSecret", "ok"), (2, "setSecret", "ok"), (2, "testSecret", "ok"),
             (2, "finishSecret", "ok")],
        )
        err = self.invocations(token=token, outcome="error")[0]["error"]
        self.assertEqual(err, "RuntimeError: database unreachable")

    def test_lambda_invoke_runs_the_bootstrap_with_the_runtime_environment(self):
        lam, fn = self.function({"MY_VAR": "x"})
        out = lam.invoke(FunctionName=fn, Payload=json.dumps({"hello": 1}).encode())
        body = json.loads(out["Payload"].read())
        self.assertEqual(body["echo"], {"hello": 1})
        env = body["env"]
        self.assertEqual(env["AWS_LAMBDA_FUNCTION_NAME"], fn.rsplit(":", 1)[1])
        self.assertEqual(env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"], "128")
        self.assertEqual(env["AWS_LAMBDA_FUNCTION_VERSION"], "$LATEST")
        self.assertEqual(env["AWS_ENDPOINT_URL"], self.endpoint)
        self.assertEqual(env["MY_VAR"], "x")
        self.assertGreater(int(body["deadline"]), time.time() * 1000)

    def test_arn_naming_no_function_still_simulates(self):
        arn = self.create(json.dumps({"password": "a"}))
        token = str(uuid.uuid4())
        self.sm.rotate_secret(SecretId=arn, RotationLambdaARN=LAMBDA, ClientRequestToken=token)
        self.assertEqual(self.current(arn), token, "synchronous, as before")
        self.assertEqual(self.invocations(token=token), [])


for _name, _member in list(vars(_ProvidedFunctionTests).items()):
    if callable(_member):
        setattr(MotoServerTest, _name, _member)


if __name__ == "__main__":
    unittest.main()

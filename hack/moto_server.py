"""moto's server, as the test bed runs it.

Kept as a wrapper so that places where moto differs from AWS's documented
behaviour can be patched here, in one visible place, rather than worked around
in the operator (see shared/docs/testbed.md). Same CLI as moto_server
(`python3 hack/moto_server.py -H 127.0.0.1 -p PORT`).

Patched (moto 5.2.1), all in-process before the server starts:

- `SecretsManagerBackend.rotate_secret` is replaced: the schedule
  (AutomaticallyAfterDays or ScheduleExpression, and Duration) is stored as
  given; `RotateImmediately=false` only configures rotation; otherwise a
  well-behaved rotation Lambda is simulated in-process (no Docker here), with
  the request's ClientRequestToken as the new VersionId, idempotently.
- `FakeSecret.to_dict` (DescribeSecret, ListSecrets) returns the stored
  `RotationRules` and computes `NextRotationDate` for `rate()` schedules and
  AutomaticallyAfterDays (left out for `cron()` schedules).
- `SecretsManagerBackend.list_secrets` serialises only the page it returns
  (moto's serialises every matching secret for each page: O(N) a page, so a
  sweep of 10,000 secrets took longer than its 60 s interval). Same order,
  filters and NextToken.
- `SecretsStore` lookups (every call naming a secret) go by name, or by the
  name inside a full ARN, instead of scanning every secret; the scan also
  iterated the dict while other request threads added to it, so concurrent
  CreateSecret calls failed now and then with a 500.
- `GET /rotor-test/rotations` (test only, not AWS) returns
  `{secret ARN: completed rotations}`; `POST /moto-api/reset` clears it too.
- Rotation functions run for real when the ARN names a moto Lambda function
  with a `provided*` runtime (created with lambda:CreateFunction and a zip
  holding `bootstrap`): RotateSecret stages the token AWSPENDING (no value)
  and returns at once, as AWS's does; a thread then invokes createSecret,
  setSecret, testSecret and finishSecret, restarting from createSecret with
  the same token when a step fails (ROTOR_MOTO_ROTATION_ATTEMPTS, default 3,
  ROTOR_MOTO_ROTATION_RETRY_SECONDS apart, default 1). The function's
  `bootstrap` runs as a local process against an emulated Lambda Runtime API
  (invocation/next, /response, /error, /runtime/init/error, the
  AWS_LAMBDA_* environment), kept warm between invocations, with
  AWS_ENDPOINT_URL = this server and dummy credentials. lambda:Invoke of such
  a function runs it too.
- `GET /rotor-test/invocations[?step=..&token=..&outcome=..]` (test only)
  lists every invocation: function, secret, token, step, attempt, outcome
  (ok | error), error (errorType: errorMessage), cold, durationMs, at.
- `POST /rotor-test/begin-rotation {"SecretId", "ClientRequestToken"}` (test
  only) does what RotateSecret does before it invokes createSecret, so tests
  can drive the steps themselves.
- `POST /rotor-test/event-queues {"QueueUrl"}` (test only): from then on, each
  finished rotation attempt of a real function sends the CloudTrail service
  event AWS logs for it (`RotationFailed` after a failed attempt,
  `RotationSucceeded` after the last step), shaped as EventBridge delivers it,
  to that moto SQS queue: what a user's EventBridge rule would route to rotor.

Still not AWS: ARNs naming no moto function (or another runtime) get a
simulated, synchronous rotation by a well-behaved function, in-process;
with RotateImmediately=false no testSecret runs; AWS's retry schedule and
the function's concurrency are not modelled (one environment per function);
cron() schedules get no NextRotationDate; NextRotationDate is not aligned to
the rotation window; PutSecretValue/UpdateSecret do not count as rotations.
"""

import atexit
import base64
import io
import json
import os
import queue
import re
import secrets
import shutil
import signal
import stat
import string
import subprocess
import tempfile
import sys
import threading
import time
import urllib.parse
import uuid
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from moto.awslambda.models import LambdaFunction, lambda_backends
from moto.moto_server.werkzeug_app import DomainDispatcherApplication
from moto.secretsmanager.exceptions import (
    InvalidParameterException,
    InvalidRequestException,
    OperationNotPermittedOnReplica,
    SecretNotFoundException,
)
from moto.secretsmanager.models import (
    MAX_RESULTS_DEFAULT,
    FakeSecret,
    ReplicaSecret,
    SecretsManagerBackend,
    SecretsStore,
    _matches,
    secretsmanager_backends,
)
from moto.secretsmanager.utils import get_secret_name_from_partial_arn
from moto.server import main

RULE_KEYS = ("AutomaticallyAfterDays", "ScheduleExpression", "Duration")
RATE = re.compile(r"^rate\(\s*(\d+)\s+(hour|hours|day|days)\s*\)$")
DURATION = re.compile(r"^([1-9]|1[0-9]|2[0-4])h$")


def _random_password() -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(32))


def _validated_rules(rules: dict[str, Any]) -> dict[str, Any]:
    rules = {k: rules[k] for k in RULE_KEYS if rules.get(k) is not None}
    days, expr = rules.get("AutomaticallyAfterDays"), rules.get("ScheduleExpression")
    # AWS RotationRulesType: "you can set the rotation schedule in
    # RotationRules with AutomaticallyAfterDays or ScheduleExpression, but
    # not both"; AutomaticallyAfterDays has a valid range of 1 to 1000.
    if days is not None and expr is not None:
        raise InvalidParameterException(
            "You can't specify both AutomaticallyAfterDays and ScheduleExpression."
        )
    if days is not None and not 1 <= int(days) <= 1000:
        raise InvalidParameterException(
            "RotationRules.AutomaticallyAfterDays must be within 1-1000."
        )
    # AWS "Schedule expressions in Secrets Manager rotation": rate(N hours|days)
    # or cron(...); rotation can be at most every four hours.
    if expr is not None:
        m = RATE.match(expr)
        if not (m or (expr.startswith("cron(") and expr.endswith(")"))):
            raise InvalidParameterException(f"Invalid ScheduleExpression: {expr}")
        if m and (int(m[1]) < 1 or (m[2].startswith("hour") and int(m[1]) < 4)):
            raise InvalidParameterException(f"Invalid ScheduleExpression: {expr}")
    # AWS RotationRulesType.Duration: the window length in hours, e.g. "3h",
    # and it must not extend into the next UTC day.
    if "Duration" in rules and not DURATION.match(rules["Duration"]):
        raise InvalidParameterException(f"Invalid Duration: {rules['Duration']}")
    return rules


def _rotated_version(version: dict[str, Any] | None) -> dict[str, Any]:
    """The value a well-behaved rotation Lambda's createSecret step would
    write: a new password in a JSON object's `password`, else a new value."""
    old = (version or {}).get("secret_string")
    if old is None and (version or {}).get("secret_binary") is not None:
        raw = _random_password().encode()
        return {"secret_binary": base64.b64encode(raw).decode()}
    try:
        obj = json.loads(old) if old is not None else None
    except ValueError:
        obj = None
    if isinstance(obj, dict) and "password" in obj:
        obj["password"] = _random_password()
        return {"secret_string": json.dumps(obj)}
    return {"secret_string": _random_password()}


def _simulate_rotation(backend: SecretsManagerBackend, secret: FakeSecret, token: str) -> None:
    # AWS "How rotation works": createSecret puts the new value as AWSPENDING
    # under the ClientRequestToken as VersionId; finishSecret moves AWSCURRENT
    # to it, and AWSPREVIOUS follows to the old version. As with AWS's template
    # Lambdas, AWSPENDING stays on the new (now AWSCURRENT) version, one of the
    # two end states RotateSecret documents as a successful rotation.
    current = next(
        (v for v, ver in secret.versions.items() if "AWSCURRENT" in ver["version_stages"]),
        None,
    )
    value = _rotated_version(secret.versions.get(current) if current else None)
    backend.put_secret_value(
        secret.name,
        value.get("secret_string"),  # type: ignore[arg-type]
        value.get("secret_binary"),  # type: ignore[arg-type]
        client_request_token=token,
        version_stages=["AWSPENDING"],
    )
    if current:
        backend.update_secret_version_stage(
            secret.name, "AWSCURRENT", remove_from_version_id=current, move_to_version_id=token
        )
    secret.set_default_version_id(token)
    secret.last_rotation_date = int(time.time())
    secret.rotor_rotations = getattr(secret, "rotor_rotations", 0) + 1


# --- Running provided.* functions: the Lambda Runtime API, emulated ---------
#
# AWS "Custom Lambda runtimes" / "Using the Lambda runtime API": the runtime
# (here the function's own `bootstrap`) polls GET /2018-06-01/runtime/
# invocation/next, which answers with the event and the headers
# Lambda-Runtime-Aws-Request-Id and Lambda-Runtime-Deadline-Ms, and posts the
# result to .../invocation/{id}/response or .../invocation/{id}/error;
# start-up failures go to /runtime/init/error. The process is kept between
# invocations (a warm environment) and restarted when it exits or times out.

STEPS = ("createSecret", "setSecret", "testSecret", "finishSecret")
# AWS retries a failed rotation; here: the whole sequence from createSecret
# with the same token, this many times, this far apart.
ROTATION_ATTEMPTS = int(os.environ.get("ROTOR_MOTO_ROTATION_ATTEMPTS", "3"))
ROTATION_RETRY_SECONDS = float(os.environ.get("ROTOR_MOTO_ROTATION_RETRY_SECONDS", "1"))
INIT_SECONDS = 10.0  # Lambda's init phase limit

_WORKDIR = tempfile.mkdtemp(prefix="rotor-moto-lambda-")
_MOTO_URL: dict[str, str] = {}
_EVENT_QUEUES: list[str] = []
_INVOCATIONS: list[dict[str, Any]] = []
_RUNTIMES: dict[str, "_Runtime"] = {}
_LOCK = threading.Lock()


class _Invocation:
    def __init__(self, payload: bytes, deadline_ms: int) -> None:
        self.request_id = str(uuid.uuid4())
        self.payload = payload
        self.deadline_ms = deadline_ms
        self.done = threading.Event()
        self.outcome: tuple[str, bytes] = ("error", b"")


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        out = b""
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                handler.rfile.readline()
                return out
            out += handler.rfile.read(size)
            handler.rfile.readline()
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


def _runtime_api(rt: "_Runtime") -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _reply(self, code: int, body: bytes = b"{}", headers: tuple = ()) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path != "/2018-06-01/runtime/invocation/next":
                return self._reply(404, b'{"errorType":"NotFound"}')
            pending = rt.pending  # this process's queue
            inv = pending.get()
            rt.in_flight[inv.request_id] = inv
            self._reply(
                200,
                inv.payload,
                (
                    ("Lambda-Runtime-Aws-Request-Id", inv.request_id),
                    ("Lambda-Runtime-Deadline-Ms", str(inv.deadline_ms)),
                    ("Lambda-Runtime-Invoked-Function-Arn", rt.arn),
                    ("Lambda-Runtime-Trace-Id", f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}"),
                ),
            )

        def do_POST(self) -> None:
            body = _read_body(self)
            if self.path == "/2018-06-01/runtime/init/error":
                rt.init_error = body
                return self._reply(202, b'{"status":"OK"}')
            m = re.match(r"^/2018-06-01/runtime/invocation/([^/]+)/(response|error)$", self.path)
            inv = rt.in_flight.pop(m[1], None) if m else None
            if inv is None:
                return self._reply(400, b'{"errorType":"InvalidRequestID"}')
            inv.outcome = ("ok" if m[2] == "response" else "error", body)  # type: ignore[index]
            inv.done.set()
            self._reply(202, b'{"status":"OK"}')

    return Handler


class _Runtime:
    """One execution environment of a provided.* function: the bootstrap from
    its zip, run as a local process, and the Runtime API it polls."""

    def __init__(self, fn: LambdaFunction) -> None:
        self.arn = fn.function_arn
        self.dir = os.path.join(_WORKDIR, f"{fn.function_name}-{fn.code_sha_256[:16] or 'code'}".replace("/", "_"))
        os.makedirs(self.dir, exist_ok=True)
        with zipfile.ZipFile(io.BytesIO(fn.code_bytes)) as z:
            z.extractall(self.dir)
        boot = os.path.join(self.dir, "bootstrap")
        if os.path.exists(boot):
            os.chmod(boot, os.stat(boot).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        self.log_path = self.dir + ".log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pending: queue.Queue[_Invocation] = queue.Queue()
        self.in_flight: dict[str, _Invocation] = {}
        self.init_error: bytes | None = None
        self.lock = threading.Lock()  # one invocation at a time per environment
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _runtime_api(self))
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _start(self, fn: LambdaFunction) -> None:
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "TZ": ":UTC",
            "AWS_REGION": fn.region,
            "AWS_DEFAULT_REGION": fn.region,
            # The test bed's convenience: the function's SDK reaches moto
            # (a function's own AWS_ENDPOINT_URL, e.g. a fault proxy, wins).
            "AWS_ENDPOINT_URL": _MOTO_URL.get("url", ""),
        }
        env.update(fn.environment_vars or {})
        env.update(
            {
                "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{self.server.server_address[1]}",
                "AWS_LAMBDA_FUNCTION_NAME": fn.function_name,
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(fn.memory_size),
                "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{fn.function_name}",
                "AWS_LAMBDA_LOG_STREAM_NAME": uuid.uuid4().hex,
                "AWS_EXECUTION_ENV": f"AWS_Lambda_{fn.run_time}",
                "LAMBDA_TASK_ROOT": self.dir,
                "LAMBDA_RUNTIME_DIR": self.dir,
                "_HANDLER": fn.handler or "bootstrap",
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
            }
        )
        self.pending = queue.Queue()
        self.in_flight = {}
        self.init_error = None
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [os.path.join(self.dir, "bootstrap")], cwd=self.dir, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.server.shutdown()

    def invoke(self, fn: LambdaFunction, payload: bytes) -> tuple[str, bytes, dict[str, Any]]:
        with self.lock:
            cold = self.proc is None or self.proc.poll() is not None
            if cold:
                self._start(fn)
            timeout = float(fn.timeout or 3) + (INIT_SECONDS if cold else 0.0)
            inv = _Invocation(payload, int((time.time() + float(fn.timeout or 3)) * 1000))
            started = time.monotonic()
            self.pending.put(inv)
            outcome = None
            while not inv.done.wait(0.02):
                assert self.proc is not None
                if self.proc.poll() is not None:
                    kind = "Runtime.InitError" if self.init_error is not None else "Runtime.ExitError"
                    msg = f"bootstrap exited with status {self.proc.returncode}"
                    outcome = ("error", json.dumps({"errorType": kind, "errorMessage": msg}).encode())
                    break
                if time.monotonic() - started > timeout:
                    self.proc.kill()
                    self.proc.wait()
                    msg = f"Task timed out after {timeout:.2f} seconds"
                    outcome = ("error", json.dumps({"errorType": "Sandbox.Timedout", "errorMessage": msg}).encode())
                    break
            status, body = outcome or inv.outcome
            return status, body, {"cold": cold, "durationMs": int((time.monotonic() - started) * 1000)}


def _cleanup() -> None:
    # Functions' processes and unpacked zips go with the server.
    for rt in list(_RUNTIMES.values()):
        if rt.proc is not None and rt.proc.poll() is None:
            rt.proc.kill()
    shutil.rmtree(_WORKDIR, ignore_errors=True)


atexit.register(_cleanup)


def _provided_function(arn: str | None, account_id: str, region: str) -> LambdaFunction | None:
    """The moto function an ARN names, if it has a provided.* runtime."""
    if not arn or ":function:" not in arn:
        return None
    try:
        fn = lambda_backends[account_id][region].get_function(arn)
    except Exception:  # noqa: BLE001 -- any lookup failure: not a moto function
        return None
    return fn if (fn.run_time or "").startswith("provided") else None


def invoke_function(fn: LambdaFunction, payload: bytes) -> tuple[str, bytes, dict[str, Any]]:
    key = f"{fn.function_arn}@{fn.code_sha_256}"
    with _LOCK:
        rt = _RUNTIMES.get(key)
        if rt is None:
            rt = _RUNTIMES[key] = _Runtime(fn)
    return rt.invoke(fn, payload)


def _record(**entry: Any) -> None:
    entry["at"] = time.time()
    with _LOCK:
        _INVOCATIONS.append(entry)


def _begin_rotation(secret: FakeSecret, token: str) -> None:
    # AWS "How rotation works": before createSecret, Secrets Manager stages
    # the ClientRequestToken as a version labelled AWSPENDING, without a
    # value; createSecret's GetSecretValue(VersionId=token, AWSPENDING) then
    # finds no value and puts one (moto lets PutSecretValue fill it).
    for vid, ver in secret.versions.items():
        if vid != token and "AWSPENDING" in ver["version_stages"]:
            ver["version_stages"].remove("AWSPENDING")
    ver = secret.versions.get(token)
    if ver is None:
        secret.versions[token] = {
            "createdate": int(time.time()),
            "version_id": token,
            "version_stages": ["AWSPENDING"],
        }
    elif "AWSPENDING" not in ver["version_stages"] and "AWSCURRENT" not in ver["version_stages"]:
        ver["version_stages"].append("AWSPENDING")


def _run_rotation(secret: FakeSecret, token: str, fn: LambdaFunction) -> None:
    """The four steps, in a thread, as AWS runs them after RotateSecret has
    returned; a failed step restarts the sequence from createSecret with the
    same token, up to ROTATION_ATTEMPTS times."""
    for attempt in range(1, ROTATION_ATTEMPTS + 1):
        failed = None
        for step in STEPS:
            event = {"Step": step, "SecretId": secret.arn, "ClientRequestToken": token}
            status, body, meta = invoke_function(fn, json.dumps(event).encode())
            error = None
            if status != "ok":
                try:
                    err = json.loads(body or b"{}")
                    error = f"{err.get('errorType')}: {err.get('errorMessage')}"
                except ValueError:
                    error = body.decode(errors="replace")[:500]
            _record(
                function=fn.function_name, secret=secret.arn, token=token, step=step,
                attempt=attempt, outcome=status, error=error, **meta,
            )
            if status != "ok":
                failed = step
                break
        if failed is None:
            secret.last_rotation_date = int(time.time())
            secret.rotor_rotations = getattr(secret, "rotor_rotations", 0) + 1
            _publish_rotation_event("RotationSucceeded", secret.arn)
            return
        _publish_rotation_event("RotationFailed", secret.arn)
        if attempt < ROTATION_ATTEMPTS:
            time.sleep(ROTATION_RETRY_SECONDS)


def _publish_rotation_event(name: str, arn: str) -> None:
    """Sends the service event AWS logs for a rotation attempt to the test
    queues, as an EventBridge rule on aws.secretsmanager would deliver it."""
    with _LOCK:
        queues = list(_EVENT_QUEUES)
    if not queues or "url" not in _MOTO_URL:
        return
    import boto3  # moto's own dependency

    region, account = arn.split(":")[3], arn.split(":")[4]
    event = {
        "version": "0", "id": str(uuid.uuid4()),
        "detail-type": "AWS Service Event via CloudTrail", "source": "aws.secretsmanager",
        "account": account, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "region": region, "resources": [],
        "detail": {
            "eventVersion": "1.08", "eventSource": "secretsmanager.amazonaws.com", "eventName": name,
            "awsRegion": region, "eventType": "AwsServiceEvent", "readOnly": False,
            "additionalEventData": {"SecretId": arn},
        },
    }
    sqs = boto3.client(
        "sqs", endpoint_url=_MOTO_URL["url"], region_name=region,
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )
    for url in queues:
        try:
            sqs.send_message(QueueUrl=url, MessageBody=json.dumps(event))
        except Exception as e:  # a queue a finished test deleted
            print(f"moto_server: event to {url} not sent: {type(e).__name__}", file=sys.stderr)


def rotate_secret(
    self: SecretsManagerBackend,
    secret_id: str,
    client_request_token: str | None = None,
    rotation_lambda_arn: str | None = None,
    rotation_rules: dict[str, Any] | None = None,
    rotate_immediately: bool = True,
) -> str:
    if not self._is_valid_identifier(secret_id):
        raise SecretNotFoundException()
    secret = self.secrets[secret_id]
    if isinstance(secret, ReplicaSecret):
        raise OperationNotPermittedOnReplica
    if secret.is_deleted():
        raise InvalidRequestException(
            "You tried to perform the operation on a secret that's currently marked deleted."
        )
    # AWS RotateSecret: "ClientRequestToken ... This value becomes the
    # VersionId of the new version"; SDKs generate a UUID when it is left out.
    token = self._from_client_request_token(client_request_token)
    # AWS RotateSecret: the token "prevent[s] the accidental creation of
    # duplicate versions if there are failures and retries during rotation".
    repeat = rotate_immediately and token in secret.versions
    # AWS RotateSecret: "If the AWSPENDING staging label is present but not
    # attached to the same version as AWSCURRENT, then any later invocation of
    # RotateSecret assumes that a previous rotation request is still in
    # progress and returns an error." (moto checks the opposite.)
    if not repeat and any(
        "AWSPENDING" in v["version_stages"] and "AWSCURRENT" not in v["version_stages"]
        for v in secret.versions.values()
    ):
        raise InvalidRequestException(
            "A previous rotation isn't complete. That rotation will be reattempted."
        )
    rules = _validated_rules(rotation_rules) if rotation_rules is not None else None
    # AWS RotateSecret: RotationLambdaARN is required for Lambda rotation
    # unless already configured; only managed secrets omit it.
    lambda_arn = rotation_lambda_arn or secret.rotation_lambda_arn
    if not lambda_arn and secret.owning_service is None:
        raise InvalidRequestException(
            "No Lambda rotation function ARN is associated with this secret."
        )
    if len(lambda_arn) > 2048:
        raise InvalidParameterException("RotationLambdaARN must <= 2048 characters long.")

    # AWS RotateSecret: "If you include the configuration parameters, the
    # operation sets the values for the secret" -- all of RotationRules, not
    # just AutomaticallyAfterDays as moto keeps.
    secret.rotation_requested = True
    secret.rotation_enabled = True
    secret.rotation_lambda_arn = lambda_arn
    if rules is not None or not hasattr(secret, "rotor_rules"):
        secret.rotor_rules = rules or {}
        secret.rotor_configured_at = int(time.time())
        secret.auto_rotate_after_days = secret.rotor_rules.get("AutomaticallyAfterDays", 0)

    response = {"ARN": secret.arn, "Name": secret.name}
    # AWS RotateSecret: with RotateImmediately=false, "Secrets Manager tests the
    # rotation configuration by running the testSecret step ... This test
    # creates an AWSPENDING version of the secret and then removes it": no new
    # version, AWSCURRENT stays. (moto adds a version and moves AWSCURRENT.)
    if not rotate_immediately:
        return json.dumps(response)
    fn = _provided_function(lambda_arn, self.account_id, self.region_name)
    if fn is not None:
        # AWS: RotateSecret "starts" the rotation and returns; the function's
        # steps run after. A repeated token whose version is not AWSCURRENT
        # yet restarts that rotation from createSecret.
        if not repeat or "AWSCURRENT" not in secret.versions[token]["version_stages"]:
            _begin_rotation(secret, token)
            threading.Thread(target=_run_rotation, args=(secret, token, fn), daemon=True).start()
    elif not repeat:
        _simulate_rotation(self, secret, token)
    response["VersionId"] = token
    return json.dumps(response)


_original_to_dict = FakeSecret.to_dict


def to_dict(self: FakeSecret) -> dict[str, Any]:
    dct = _original_to_dict(self)
    if not hasattr(self, "rotor_rules"):  # rotation never set up through the patch
        return dct
    # AWS DescribeSecret returns RotationRules as set, with ScheduleExpression
    # and Duration (moto returns only AutomaticallyAfterDays).
    if self.rotor_rules:
        dct["RotationRules"] = dict(self.rotor_rules)
    else:
        dct.pop("RotationRules", None)
    if self.last_rotation_date is None:  # AWS: only once the secret has rotated
        dct.pop("LastRotatedDate", None)
    # AWS RotationRulesType: "Secrets Manager calculates the next rotation date
    # based on the previous rotation". Computed for rate() and
    # AutomaticallyAfterDays only; absent while rotation is off.
    dct.pop("NextRotationDate", None)
    base = self.last_rotation_date or self.rotor_configured_at
    days = self.rotor_rules.get("AutomaticallyAfterDays")
    m = RATE.match(self.rotor_rules.get("ScheduleExpression") or "")
    if self.rotation_enabled and days is not None:
        dct["NextRotationDate"] = base + int(days) * 86400
    elif self.rotation_enabled and m:
        dct["NextRotationDate"] = base + int(m[1]) * (3600 if m[2].startswith("hour") else 86400)
    return dct


def list_secrets(
    self: SecretsManagerBackend,
    filters: list[dict[str, Any]],
    max_results: int = MAX_RESULTS_DEFAULT,
    next_token: str | None = None,
    include_planned_deletion: bool = False,
) -> tuple[list[dict[str, Any]], str | None]:
    # moto's own serialises every matching secret for every page and then
    # slices one page out, so a page of 10,000 secrets costs ~150 ms and a
    # full listing grows with the square of the count. AWS pages in constant
    # time. Same order, filters and tokens; only the page is serialised.
    matching = [
        secret
        for secret in list(dict.values(self.secrets))  # a snapshot: other threads add secrets
        if (include_planned_deletion or not getattr(secret, "deleted_date", None))
        and _matches(secret, filters)
    ]
    page, token = self._get_secret_values_page_and_next_token(matching, max_results, next_token)
    return [secret.to_dict() for secret in page], token


def _find_secret(store: SecretsStore, key: str) -> FakeSecret | ReplicaSecret | None:
    """The secret named `key`, or whose full ARN is `key`, by its name (the
    store's key for a primary; a full ARN is arn:...:secret:NAME-XXXXXX):
    moto scans every secret for each lookup, and iterates the dict while other
    request threads add to it ("dictionary changed size during iteration", a
    500)."""
    found = dict.get(store, key)
    if found is not None:
        return found
    if key.startswith("arn:"):
        tail = key.split(":")[-1]
        for name in (tail[:-7], tail):
            found = dict.get(store, name)
            if found is not None and found.arn == key:
                return found
    # Replicas are stored under their ARN but found by name too: scan the
    # (few) stores that hold one, over a snapshot.
    if getattr(store, "rotor_has_replicas", False):
        for secret in list(dict.values(store)):
            if secret.arn == key or secret.name == key:
                return secret
    return None


def _store_setitem(self: SecretsStore, key: str, value: FakeSecret | ReplicaSecret) -> None:
    if isinstance(value, ReplicaSecret):
        self.rotor_has_replicas = True
    dict.__setitem__(self, key, value)


def _store_getitem(self: SecretsStore, key: str) -> FakeSecret | ReplicaSecret:
    found = _find_secret(self, key)
    return found if found is not None else dict.__getitem__(self, get_secret_name_from_partial_arn(key))


def _store_contains(self: SecretsStore, key: str) -> bool:
    return _find_secret(self, key) is not None or dict.__contains__(self, get_secret_name_from_partial_arn(key))


def _store_get(self: SecretsStore, key: str) -> FakeSecret | ReplicaSecret | None:  # type: ignore[override]
    found = _find_secret(self, key)
    return found if found is not None else dict.get(self, get_secret_name_from_partial_arn(key))


def _store_pop(self: SecretsStore, key: str) -> FakeSecret | ReplicaSecret | None:  # type: ignore[override]
    found = _find_secret(self, key)
    return dict.pop(self, found.name if found is not None else get_secret_name_from_partial_arn(key), None)


def _rotation_counts() -> dict[str, int]:
    counts = {}
    for account in list(secretsmanager_backends.values()):
        for backend in list(account.values()):
            for secret in list(backend.secrets.values()):
                if getattr(secret, "rotor_rotations", 0):
                    counts[secret.arn] = secret.rotor_rotations
    return counts


_original_invoke = LambdaFunction.invoke


def lambda_invoke(self: LambdaFunction, body: str, request_headers: Any, response_headers: Any) -> str | bytes:
    # lambda:Invoke of a provided.* function runs its bootstrap (moto would
    # need Docker); other runtimes keep moto's behaviour.
    if not (self.run_time or "").startswith("provided"):
        return _original_invoke(self, body, request_headers, response_headers)
    status, payload, meta = invoke_function(self, (body or "{}").encode() if isinstance(body, str) else body)
    _record(function=self.function_name, secret=None, token=None, step=None, attempt=1,
            outcome=status, error=None if status == "ok" else payload.decode(errors="replace"), **meta)
    if status != "ok":
        response_headers["x-amz-function-error"] = "Unhandled"
    return payload


def _json_body(environ: dict[str, Any]) -> dict[str, Any]:
    n = int(environ.get("CONTENT_LENGTH") or 0)
    return json.loads(environ["wsgi.input"].read(n) or b"{}") if n else {}


def _begin_rotation_for_tests(body: dict[str, Any]) -> dict[str, Any]:
    """Test only: what RotateSecret does before it invokes createSecret
    (rotation enabled, the token staged AWSPENDING without a value), so that
    tests can drive the four steps themselves."""
    backend = secretsmanager_backends[body.get("AccountId", "123456789012")][body.get("Region", "us-east-1")]
    secret_id = body["SecretId"]
    if not backend._is_valid_identifier(secret_id):
        raise KeyError(secret_id)
    secret = backend.secrets[secret_id]
    secret.rotation_requested = True
    secret.rotation_enabled = True
    secret.rotation_lambda_arn = body.get("RotationLambdaARN") or secret.rotation_lambda_arn or "arn:aws:lambda:us-east-1:123456789012:function:tests"
    if not hasattr(secret, "rotor_rules"):
        secret.rotor_rules = {}
        secret.rotor_configured_at = int(time.time())
    _begin_rotation(secret, body["ClientRequestToken"])
    return {"ARN": secret.arn, "VersionId": body["ClientRequestToken"]}


def _reply(start_response: Any, status: str, obj: Any) -> list[bytes]:
    body = json.dumps(obj).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


_original_call = DomainDispatcherApplication.__call__


def dispatch(self: DomainDispatcherApplication, environ: dict[str, Any], start_response: Any) -> Any:
    # Where a function's SDK finds moto: this server, as its clients reach it.
    if "url" not in _MOTO_URL and environ.get("SERVER_PORT"):
        _MOTO_URL["url"] = f"http://127.0.0.1:{environ['SERVER_PORT']}"
    path, method = environ.get("PATH_INFO"), environ.get("REQUEST_METHOD")
    # Test-only introspection, not an AWS API.
    if path == "/rotor-test/rotations" and method == "GET":
        return _reply(start_response, "200 OK", _rotation_counts())
    if path == "/rotor-test/invocations" and method == "GET":
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        with _LOCK:
            rows = [
                r for r in _INVOCATIONS
                if all(str(r.get(k)) in v for k, v in query.items())
            ]
        return _reply(start_response, "200 OK", rows)
    if path == "/rotor-test/begin-rotation" and method == "POST":
        try:
            return _reply(start_response, "200 OK", _begin_rotation_for_tests(_json_body(environ)))
        except KeyError as e:
            return _reply(start_response, "404 Not Found", {"error": f"not found: {e}"})
    if path == "/rotor-test/event-queues" and method == "POST":
        with _LOCK:
            _EVENT_QUEUES.append(_json_body(environ)["QueueUrl"])
        return _reply(start_response, "200 OK", {})
    if path == "/moto-api/reset" and method == "POST":
        with _LOCK:
            _INVOCATIONS.clear()
            _EVENT_QUEUES.clear()
            runtimes = list(_RUNTIMES.values())
            _RUNTIMES.clear()
        for rt in runtimes:
            rt.stop()
    return _original_call(self, environ, start_response)


SecretsManagerBackend.rotate_secret = rotate_secret  # type: ignore[method-assign]
LambdaFunction.invoke = lambda_invoke  # type: ignore[method-assign]
FakeSecret.to_dict = to_dict  # type: ignore[method-assign]
SecretsManagerBackend.list_secrets = list_secrets  # type: ignore[method-assign]
SecretsStore.__setitem__ = _store_setitem  # type: ignore[method-assign]
SecretsStore.__getitem__ = _store_getitem  # type: ignore[method-assign]
SecretsStore.__contains__ = _store_contains  # type: ignore[method-assign,assignment]
SecretsStore.get = _store_get  # type: ignore[method-assign,assignment]
SecretsStore.pop = _store_pop  # type: ignore[method-assign,assignment]
DomainDispatcherApplication.__call__ = dispatch  # type: ignore[method-assign]

if __name__ == "__main__":
    # testbed.sh down sends SIGTERM: exit normally so that _cleanup runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    main()

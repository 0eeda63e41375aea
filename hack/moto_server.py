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
- `GET /rotor-test/rotations` (test only, not AWS) returns
  `{secret ARN: simulated rotations}`; `POST /moto-api/reset` clears it too.

Still not AWS: the Lambda ARN is not checked against moto's Lambda and no
Lambda runs; the simulated rotation is synchronous (AWS's is asynchronous);
cron() schedules get no NextRotationDate; NextRotationDate is not aligned to
the rotation window; PutSecretValue/UpdateSecret do not count as rotations.
"""

import base64
import json
import re
import secrets
import string
import time
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication
from moto.secretsmanager.exceptions import (
    InvalidParameterException,
    InvalidRequestException,
    OperationNotPermittedOnReplica,
    SecretNotFoundException,
)
from moto.secretsmanager.models import (
    FakeSecret,
    ReplicaSecret,
    SecretsManagerBackend,
    secretsmanager_backends,
)
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
    if not repeat:
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


def _rotation_counts() -> dict[str, int]:
    counts = {}
    for account in list(secretsmanager_backends.values()):
        for backend in list(account.values()):
            for secret in list(backend.secrets.values()):
                if getattr(secret, "rotor_rotations", 0):
                    counts[secret.arn] = secret.rotor_rotations
    return counts


_original_call = DomainDispatcherApplication.__call__


def dispatch(self: DomainDispatcherApplication, environ: dict[str, Any], start_response: Any) -> Any:
    # Test-only introspection, not an AWS API.
    if environ.get("PATH_INFO") == "/rotor-test/rotations" and environ.get("REQUEST_METHOD") == "GET":
        body = json.dumps(_rotation_counts()).encode()
        start_response(
            "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        )
        return [body]
    return _original_call(self, environ, start_response)


SecretsManagerBackend.rotate_secret = rotate_secret  # type: ignore[method-assign]
FakeSecret.to_dict = to_dict  # type: ignore[method-assign]
DomainDispatcherApplication.__call__ = dispatch  # type: ignore[method-assign]

if __name__ == "__main__":
    main()

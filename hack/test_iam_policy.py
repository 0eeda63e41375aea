#!/usr/bin/env python3
"""Checks docs/iam-policy.json, the sample IAM policy for rotor's role.

    python3 hack/test_iam_policy.py      (stdlib only; exits non-zero on failure)

Two kinds of checks:

* Structure: the policy allows every IAM action the AWS calls in src/aws/
  need and nothing else, writes are scoped by the rotor.dev/owner tag, KMS
  data-key use goes only through Secrets Manager, and so on.
* Decisions: a small evaluator for the part of the IAM language the policy
  uses answers table-driven requests ("may cluster prod tag this secret?").

moto does not enforce IAM, so none of this is checked against AWS. The
evaluator models only the documented semantics of the operators the policy
uses; it cannot tell which condition keys AWS actually puts in each request
context (the README's "IAM policy" section lists what is unproven).
"""

import json
import pathlib
import re
import sys
import unittest

ROOT = pathlib.Path(__file__).resolve().parent.parent
POLICY_PATH = ROOT / "docs" / "iam-policy.json"
AWS_SRC = ROOT / "src" / "aws"

OWNER = "aws:ResourceTag/rotor.dev/owner"
REQUEST_OWNER = "aws:RequestTag/rotor.dev/owner"
ADOPTABLE = "aws:ResourceTag/rotor.dev/adoptable"
RELEASED = "aws:ResourceTag/rotor.dev/released-from"
CLUSTER_PATTERN = "CLUSTER_NAME/*"
SECRET_ARNS = "arn:aws:secretsmanager:*:ACCOUNT_ID:secret:*"
GET_VALUE = "secretsmanager:GetSecretValue"
BATCH_READ = "secretsmanager:BatchGetSecretValue"

# Every AWS SDK operation rotor calls (found in src/aws/ by test_operations_
# match_the_code) and the IAM actions it needs, per the "Required
# permissions" of each operation's API reference.
ROTOR_OPERATIONS = {
    # rotor's own account id, for --allowed-kms-key-accounts; AWS: "No
    # permissions are required to perform this operation."
    "sts:GetCallerIdentity": set(),
    "secretsmanager:ListSecrets": {"secretsmanager:ListSecrets"},
    "secretsmanager:DescribeSecret": {"secretsmanager:DescribeSecret"},
    "secretsmanager:GetSecretValue": {"secretsmanager:GetSecretValue", "kms:Decrypt"},
    # The action itself (it has no resource type, so it is granted on "*"),
    # and GetSecretValue on each secret it returns: a secret the caller may
    # not GetSecretValue comes back in Errors, not as a value. rotor passes a
    # SecretIdList of ARNs and never Filters (which would also need
    # ListSecrets). With a customer managed key: kms:Decrypt.
    "secretsmanager:BatchGetSecretValue": {
        "secretsmanager:BatchGetSecretValue",
        "secretsmanager:GetSecretValue",
        "kms:Decrypt",
    },
    # With tags: TagResource; with replicas: ReplicateSecretToRegions; with a
    # customer managed key: GenerateDataKey and Decrypt.
    "secretsmanager:CreateSecret": {
        "secretsmanager:CreateSecret",
        "secretsmanager:TagResource",
        "secretsmanager:ReplicateSecretToRegions",
        "kms:GenerateDataKey",
        "kms:Decrypt",
    },
    "secretsmanager:UpdateSecret": {
        "secretsmanager:UpdateSecret",
        "kms:GenerateDataKey",
        "kms:Encrypt",
        "kms:Decrypt",
    },
    "secretsmanager:TagResource": {"secretsmanager:TagResource"},
    "secretsmanager:UntagResource": {"secretsmanager:UntagResource"},
    "secretsmanager:GetResourcePolicy": {"secretsmanager:GetResourcePolicy"},
    "secretsmanager:PutResourcePolicy": {"secretsmanager:PutResourcePolicy"},
    "secretsmanager:DeleteResourcePolicy": {"secretsmanager:DeleteResourcePolicy"},
    "secretsmanager:ReplicateSecretToRegions": {
        "secretsmanager:ReplicateSecretToRegions",
        "kms:Decrypt",
        "kms:GenerateDataKey",
        "kms:Encrypt",
    },
    "secretsmanager:RemoveRegionsFromReplication": {"secretsmanager:RemoveRegionsFromReplication"},
    "secretsmanager:RestoreSecret": {"secretsmanager:RestoreSecret"},
    # "You also need lambda:InvokeFunction permissions on the rotation function."
    "secretsmanager:RotateSecret": {"secretsmanager:RotateSecret", "lambda:InvokeFunction"},
    "secretsmanager:CancelRotateSecret": {"secretsmanager:CancelRotateSecret"},
    "secretsmanager:DeleteSecret": {"secretsmanager:DeleteSecret"},
    "secretsmanager:ListSecretVersionIds": {"secretsmanager:ListSecretVersionIds"},
    "kms:DescribeKey": {"kms:DescribeKey"},
    "kms:ListKeys": {"kms:ListKeys"},
    "kms:ListResourceTags": {"kms:ListResourceTags"},
    # "To use the Tags parameter, kms:TagResource (IAM policy)."
    "kms:CreateKey": {"kms:CreateKey", "kms:TagResource"},
    "kms:CreateAlias": {"kms:CreateAlias"},
    "kms:DeleteAlias": {"kms:DeleteAlias"},
    "kms:ScheduleKeyDeletion": {"kms:ScheduleKeyDeletion"},
    "sqs:ReceiveMessage": {"sqs:ReceiveMessage"},
    # Batch calls are authorized by the single-message action.
    "sqs:DeleteMessageBatch": {"sqs:DeleteMessage"},
}
ALLOWED_ACTIONS = set().union(*ROTOR_OPERATIONS.values())

# The Rust SDK client each service is reached through in src/aws/.
SDK_CLIENTS = {"secrets": "secretsmanager", "kms": "kms", "sqs": "sqs", "sts": "sts"}

READ_ONLY = {
    "secretsmanager:ListSecrets",
    "secretsmanager:DescribeSecret",
    "kms:DescribeKey",
    "kms:ListKeys",
    "kms:ListResourceTags",
    # Reads values, but only those GetSecretValue allows on each secret:
    # batch_read_problems() and BatchReads hold the policy to that.
    BATCH_READ,
}
# Actions on an existing secret that only this cluster's secrets may see.
OWNED_SECRET_ACTIONS = {
    "secretsmanager:GetSecretValue",
    "secretsmanager:ListSecretVersionIds",
    "secretsmanager:GetResourcePolicy",
    "secretsmanager:PutResourcePolicy",
    "secretsmanager:DeleteResourcePolicy",
    "secretsmanager:UpdateSecret",
    "secretsmanager:RotateSecret",
    "secretsmanager:CancelRotateSecret",
    "secretsmanager:RemoveRegionsFromReplication",
    "secretsmanager:DeleteSecret",
    "secretsmanager:RestoreSecret",
    "secretsmanager:UntagResource",
}
OWNED_KEY_ACTIONS = {"kms:ScheduleKeyDeletion", "kms:CreateAlias", "kms:DeleteAlias"}
DATA_KEY_ACTIONS = {"kms:GenerateDataKey", "kms:Decrypt", "kms:Encrypt"}


def load_policy(text=None):
    return json.loads(POLICY_PATH.read_text() if text is None else text)


def as_list(x):
    return x if isinstance(x, list) else [x]


def camel(snake):
    return "".join(part.capitalize() for part in snake.split("_"))


# --- a tiny IAM evaluator ----------------------------------------------------
#
# Identity policy only (no SCPs, resource or key policies, boundaries): an
# explicit Deny wins, then any Allow, else the implicit default deny.
# Supported: Action/Resource with * and ? wildcards, and the condition
# operators below with the IfExists suffix and ForAllValues/ForAnyValue.
# Anything else raises, so the policy cannot outgrow what is tested.


def wildcard(pattern, value, ignore_case=False):
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.IGNORECASE if ignore_case else 0) is not None


MATCHERS = {
    "StringEquals": lambda want, got: want == got,
    "StringLike": wildcard,
    "Bool": lambda want, got: str(want).lower() == str(got).lower(),
    "ArnLike": wildcard,
}
NEGATED = {"StringNotEquals": "StringEquals", "StringNotLike": "StringLike"}


def condition_holds(operator, key, wanted, context):
    qualifier, _, base = operator.rpartition(":")
    if qualifier not in ("", "ForAllValues", "ForAnyValue"):
        raise ValueError(f"unsupported set qualifier {qualifier!r}")
    wanted = as_list(wanted)
    present = key in context
    if base == "Null":
        (flag,) = wanted
        return (not present) == (str(flag).lower() == "true")
    if_exists = base.endswith("IfExists")
    base = base.removesuffix("IfExists")
    negated = base in NEGATED
    positive = NEGATED.get(base, base)
    if positive not in MATCHERS:
        raise ValueError(f"unsupported condition operator {operator!r}")
    if not present:
        # IAM: a missing key fails a condition, except negated operators,
        # ...IfExists and ForAllValues (vacuously true).
        if if_exists or qualifier == "ForAllValues":
            return True
        if qualifier == "ForAnyValue":
            return False
        return negated

    def one(value):
        hit = any(MATCHERS[positive](w, value) for w in wanted)
        return not hit if negated else hit

    values = as_list(context[key])
    if qualifier == "ForAllValues":
        return all(one(v) for v in values)
    if qualifier == "ForAnyValue":
        return any(one(v) for v in values)
    if len(values) != 1:
        raise ValueError(f"{key} is multi-valued; {operator} needs a set qualifier")
    return one(values[0])


def statement_applies(statement, action, resource, context):
    for unsupported in ("NotAction", "NotResource", "Principal", "NotPrincipal"):
        if unsupported in statement:
            raise ValueError(f"{statement.get('Sid')}: {unsupported} is not modelled")
    if not any(wildcard(a, action, ignore_case=True) for a in as_list(statement["Action"])):
        return False
    if not any(wildcard(r, resource) for r in as_list(statement["Resource"])):
        return False
    return all(
        condition_holds(operator, key, wanted, context)
        for operator, block in statement.get("Condition", {}).items()
        for key, wanted in block.items()
    )


def decide(policy, action, resource, context=None):
    """'Allow', 'Deny' (explicit) or 'ImplicitDeny'."""
    context = context or {}
    applying = [s for s in policy["Statement"] if statement_applies(s, action, resource, context)]
    if any(s["Effect"] == "Deny" for s in applying):
        return "Deny"
    if any(s["Effect"] == "Allow" for s in applying):
        return "Allow"
    return "ImplicitDeny"


def batch_get_secret_value(policy, secrets, filters=False):
    """BatchGetSecretValue as its API reference describes authorization: the
    action itself on "*" (it has no resource type), ListSecrets as well when
    Filters choose the secrets, then GetSecretValue on each secret; a secret
    that fails that check is reported in Errors instead of its value.

    secrets maps each ARN to the request context of GetSecretValue on it.
    Returns (ARNs whose values come back, ARNs in Errors), or None when the
    call itself is denied."""
    if decide(policy, BATCH_READ, "*") != "Allow":
        return None
    if filters and decide(policy, "secretsmanager:ListSecrets", "*") != "Allow":
        return None
    values = {arn for arn, context in secrets.items() if decide(policy, GET_VALUE, arn, context) == "Allow"}
    return values, set(secrets) - values


def batch_read_problems(policy):
    """Ways the policy could let BatchGetSecretValue reach more than
    GetSecretValue on this cluster's owner-tagged secrets (empty: none)."""
    problems = []
    allows = [s for s in policy["Statement"] if s["Effect"] == "Allow"]
    batch = [s for s in allows if BATCH_READ in as_list(s["Action"])]
    if not batch:
        problems.append("no statement allows BatchGetSecretValue")
    for s in batch:
        # "*" is the only resource it is authorized on, so anything granted
        # alongside it would be granted on every resource of the account.
        if as_list(s["Action"]) != [BATCH_READ]:
            problems.append(f"{s['Sid']}: grants {sorted(set(as_list(s['Action'])) - {BATCH_READ})} on its resources")
        if as_list(s["Resource"]) != ["*"]:
            problems.append(f"{s['Sid']}: BatchGetSecretValue has no resource type, grant it on \"*\"")
        for block in s.get("Condition", {}).values():
            for key in block:
                if key.startswith("aws:ResourceTag/"):
                    problems.append(f"{s['Sid']}: no resource, so {key} is never in the request")
    # The per-secret check that makes "*" safe.
    getters = [s for s in allows if GET_VALUE in as_list(s["Action"])]
    if not getters:
        problems.append("no statement allows GetSecretValue")
    for s in getters:
        if as_list(s["Resource"]) != [SECRET_ARNS]:
            problems.append(f"{s['Sid']}: GetSecretValue on {s['Resource']}")
        if s.get("Condition", {}).get("StringLike", {}).get(OWNER) != CLUSTER_PATTERN:
            problems.append(f"{s['Sid']}: GetSecretValue not limited to owner {CLUSTER_PATTERN}")
    return problems


# --- structure ---------------------------------------------------------------


class Structure(unittest.TestCase):
    def setUp(self):
        self.policy = load_policy()
        self.statements = self.policy["Statement"]
        self.allows = [s for s in self.statements if s["Effect"] == "Allow"]

    def test_version_and_statement_shape(self):
        self.assertEqual(self.policy["Version"], "2012-10-17")
        self.assertEqual(set(self.policy), {"Version", "Statement"})
        for s in self.statements:
            self.assertLessEqual(set(s), {"Sid", "Effect", "Action", "Resource", "Condition"}, s.get("Sid"))
            self.assertIn(s["Effect"], ("Allow", "Deny"))
            self.assertIn("Action", s)
            self.assertIn("Resource", s)

    def test_sids_are_unique_and_descriptive(self):
        sids = [s.get("Sid") for s in self.statements]
        self.assertTrue(all(sids), "every statement needs a Sid")
        self.assertEqual(len(sids), len(set(sids)), "duplicate Sid")
        for sid in sids:
            self.assertRegex(sid, r"^[A-Z][A-Za-z0-9]{7,}$")

    def test_actions_are_exact_and_on_the_allow_list(self):
        for s in self.statements:
            for action in as_list(s["Action"]):
                self.assertRegex(action, r"^[a-z0-9-]+:[A-Z][A-Za-z]+$", f"{s['Sid']}: wildcard or malformed")
                self.assertIn(action, ALLOWED_ACTIONS, f"{s['Sid']}: rotor never needs {action}")

    def test_every_needed_action_is_allowed(self):
        allowed = {a for s in self.allows for a in as_list(s["Action"])}
        for operation, needs in ROTOR_OPERATIONS.items():
            self.assertLessEqual(needs, allowed, f"{operation} needs {sorted(needs - allowed)}")

    def test_operations_match_the_code(self):
        """ROTOR_OPERATIONS lists exactly the SDK calls in src/aws/."""
        if not AWS_SRC.is_dir():
            self.skipTest(f"{AWS_SRC} not found")
        call = re.compile(r"\b(" + "|".join(SDK_CLIENTS) + r")\s*\.\s*([a-z][a-z0-9_]*)\s*\(\s*\)")
        found = set()
        for path in AWS_SRC.glob("*.rs"):
            for client, method in call.findall(path.read_text()):
                found.add(f"{SDK_CLIENTS[client]}:{camel(method)}")
        self.assertEqual(found, set(ROTOR_OPERATIONS), "update ROTOR_OPERATIONS and docs/iam-policy.json")
        crates = set()
        for path in (ROOT / "src").rglob("*.rs"):
            crates.update(re.findall(r"\baws_sdk_([a-z0-9]+)", path.read_text()))
        self.assertLessEqual(crates, set(SDK_CLIENTS.values()), "rotor uses an AWS service this test does not know")

    def test_batch_reads_only_reach_what_get_secret_value_allows(self):
        self.assertEqual(batch_read_problems(self.policy), [])

    def test_no_unconditioned_write_on_every_resource(self):
        for s in self.allows:
            writes = set(as_list(s["Action"])) - READ_ONLY
            if writes and "*" in as_list(s["Resource"]):
                self.assertTrue(s.get("Condition"), f"{s['Sid']}: {sorted(writes)} on * without a Condition")

    def test_resources_stay_in_the_account(self):
        for s in self.allows:
            for resource in as_list(s["Resource"]):
                if resource != "*":
                    self.assertRegex(resource, r"^arn:aws:[a-z0-9-]+:\*:ACCOUNT_ID:", s["Sid"])

    def test_create_statements_require_the_owner_request_tag(self):
        for s in self.allows:
            if {"secretsmanager:CreateSecret", "kms:CreateKey"} & set(as_list(s["Action"])):
                self.assertEqual(s["Condition"]["StringLike"][REQUEST_OWNER], CLUSTER_PATTERN, s["Sid"])

    def test_existing_secrets_and_keys_are_scoped_by_owner_tag(self):
        for s in self.allows:
            actions = set(as_list(s["Action"]))
            if actions & (OWNED_SECRET_ACTIONS | OWNED_KEY_ACTIONS):
                if s["Resource"] == "arn:aws:kms:*:ACCOUNT_ID:alias/*":
                    # The alias half of CreateAlias/DeleteAlias; the key half
                    # is checked against the key's owner tag.
                    self.assertEqual(actions, {"kms:CreateAlias", "kms:DeleteAlias"})
                    continue
                self.assertEqual(s["Condition"]["StringLike"][OWNER], CLUSTER_PATTERN, s["Sid"])

    def test_unowned_secrets_only_described_or_tagged_for_this_cluster(self):
        for s in self.allows:
            null = s.get("Condition", {}).get("Null", {})
            if null.get(OWNER) != "true":
                continue
            if set(as_list(s["Action"])) == {"secretsmanager:DescribeSecret"}:
                continue
            self.assertEqual(s["Condition"]["StringLike"][REQUEST_OWNER], CLUSTER_PATTERN, s["Sid"])
            self.assertNotIn("secretsmanager:GetSecretValue", as_list(s["Action"]))

    def test_tag_statements_constrain_owner_and_tag_keys(self):
        tag_actions = {"secretsmanager:TagResource", "kms:TagResource"}
        for s in self.allows:
            if not tag_actions & set(as_list(s["Action"])):
                continue
            cond = s["Condition"]
            owner_values = [cond.get(op, {}).get(REQUEST_OWNER) for op in ("StringLike", "StringLikeIfExists")]
            self.assertIn(CLUSTER_PATTERN, owner_values, f"{s['Sid']}: owner value not pinned to this cluster")
            if cond.get("Null", {}).get(OWNER) == "true" and "secretsmanager:SecretId" not in cond["Null"]:
                # Tagging something nobody owns yet: only the owner key.
                self.assertEqual(cond["ForAllValues:StringEquals"]["aws:TagKeys"], ["rotor.dev/owner"], s["Sid"])
        guards = [s for s in self.statements if s["Effect"] == "Deny"]
        for action in ("secretsmanager:TagResource", "secretsmanager:UntagResource", "kms:TagResource"):
            self.assertTrue(
                any(
                    action in as_list(g["Action"])
                    and g["Condition"].get("ForAnyValue:StringEquals", {}).get("aws:TagKeys") == ["rotor.dev/owner"]
                    and g["Condition"].get("StringNotLike", {}).get(OWNER) == CLUSTER_PATTERN
                    for g in guards
                ),
                f"no Deny keeps {action} off other clusters' owner tags",
            )

    def test_adoption_needs_the_marker(self):
        adopting = [
            s
            for s in self.allows
            if "secretsmanager:TagResource" in as_list(s["Action"])
            and s["Condition"].get("Null", {}).get(OWNER) == "true"
            and "secretsmanager:SecretId" not in s["Condition"]["Null"]
        ]
        self.assertTrue(adopting)
        for s in adopting:
            # Either the admin's marker, or a release by this same cluster
            # (deletionPolicy Retain) that the re-created object re-claims.
            marker = s["Condition"].get("StringEquals", {}).get(ADOPTABLE)
            released = s["Condition"].get("StringLike", {}).get(RELEASED)
            self.assertTrue(marker == "true" or released == "CLUSTER_NAME/*", s["Sid"])

    def test_no_service_wildcards_and_kms_tagging_is_conditioned(self):
        for s in self.statements:
            for action in as_list(s["Action"]):
                self.assertNotIn("*", action)
            if s["Effect"] == "Allow" and "kms:TagResource" in as_list(s["Action"]):
                self.assertEqual(as_list(s["Action"]), ["kms:TagResource"], s["Sid"])
                self.assertEqual(s["Condition"]["Null"][OWNER], "true", s["Sid"])

    def test_data_keys_only_through_secrets_manager(self):
        for s in self.allows:
            if DATA_KEY_ACTIONS & set(as_list(s["Action"])):
                self.assertEqual(
                    s["Condition"], {"StringLike": {"kms:ViaService": "secretsmanager.*.amazonaws.com"}}, s["Sid"]
                )

    def test_lambda_and_sqs_are_narrow(self):
        for s in self.allows:
            for action in as_list(s["Action"]):
                service = action.split(":")[0]
                for resource in as_list(s["Resource"]):
                    if service == "lambda":
                        self.assertRegex(
                            resource,
                            r"^arn:aws:lambda:\*:ACCOUNT_ID:function:(SecretsManager|secretsmanager|rotor-rotator)\*$",
                        )
                    if service == "sqs":
                        self.assertEqual(resource, "arn:aws:sqs:*:ACCOUNT_ID:rotor-*")


# --- decisions ---------------------------------------------------------------

ACCOUNT = "123456789012"
REGION = "eu-west-1"
SECRET = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:shop/db-AbCdEf"
KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
ALIAS = f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/shop-secrets"
VIA_SM = {"kms:ViaService": f"secretsmanager.{REGION}.amazonaws.com"}


def ctx(resource_tags=None, request_tags=None, untag=None, standalone=True, **keys):
    """A request context: the resource's tags, the tags in the request, and
    for calls on an existing secret its SecretId."""
    c = {f"aws:ResourceTag/{k}": v for k, v in (resource_tags or {}).items()}
    if request_tags is not None:
        c.update({f"aws:RequestTag/{k}": v for k, v in request_tags.items()})
        c["aws:TagKeys"] = list(request_tags)
    if untag is not None:
        c["aws:TagKeys"] = list(untag)
    if standalone:
        c["secretsmanager:SecretId"] = SECRET
    c.update(keys)
    return c


OWN = {"rotor.dev/owner": "prod/shop/db"}
OTHER = {"rotor.dev/owner": "staging/shop/db"}
MARKED = {"rotor.dev/adoptable": "true"}
CREATE = dict(standalone=False)  # inside CreateSecret: no SecretId, no resource tags

CASES = [
    # (description, action, resource, context, expected)
    ("describe own secret", "secretsmanager:DescribeSecret", SECRET, ctx(OWN), "Allow"),
    ("describe another cluster's secret", "secretsmanager:DescribeSecret", SECRET, ctx(OTHER), "ImplicitDeny"),
    ("describe a secret of cluster prod-eu (prefix of the name)", "secretsmanager:DescribeSecret", SECRET,
     ctx({"rotor.dev/owner": "prod-eu/shop/db"}), "ImplicitDeny"),
    ("describe an untagged or missing secret (metadata only)", "secretsmanager:DescribeSecret", SECRET, ctx(),
     "Allow"),
    ("read own secret's value", "secretsmanager:GetSecretValue", SECRET, ctx(OWN), "Allow"),
    ("read another cluster's value", "secretsmanager:GetSecretValue", SECRET, ctx(OTHER), "ImplicitDeny"),
    ("read an untagged secret's value", "secretsmanager:GetSecretValue", SECRET, ctx(MARKED), "ImplicitDeny"),
    ("rotate own secret", "secretsmanager:RotateSecret", SECRET, ctx(OWN), "Allow"),
    ("delete another cluster's secret", "secretsmanager:DeleteSecret", SECRET, ctx(OTHER), "ImplicitDeny"),
    ("list secrets", "secretsmanager:ListSecrets", "*", {}, "Allow"),
    # No resource type: the values it returns are each checked as GetSecretValue
    # (the two cases above, and BatchReads below).
    ("batch read values", "secretsmanager:BatchGetSecretValue", "*", {}, "Allow"),
]
CASES += [
    (f"{action} on own secret", f"secretsmanager:{action}", SECRET, ctx(OWN), "Allow")
    for action in ("ListSecretVersionIds", "GetResourcePolicy", "DeleteResourcePolicy", "UpdateSecret",
                   "CancelRotateSecret", "ReplicateSecretToRegions", "RemoveRegionsFromReplication",
                   "DeleteSecret", "RestoreSecret")
]
CASES += [
    # creation
    ("create with this cluster's owner tag", "secretsmanager:CreateSecret", SECRET,
     ctx(request_tags={**OWN, "team": "shop"}, **CREATE), "Allow"),
    ("create without the owner tag", "secretsmanager:CreateSecret", SECRET,
     ctx(request_tags={"team": "shop"}, **CREATE), "ImplicitDeny"),
    ("create owned by another cluster", "secretsmanager:CreateSecret", SECRET,
     ctx(request_tags=OTHER, **CREATE), "Deny"),
    ("tags inside CreateSecret", "secretsmanager:TagResource", SECRET,
     ctx(request_tags={**OWN, "team": "shop"}, **CREATE), "Allow"),
    ("replicas inside CreateSecret", "secretsmanager:ReplicateSecretToRegions", SECRET,
     ctx(request_tags=OWN, **CREATE), "Allow"),
    ("replicate an untagged secret", "secretsmanager:ReplicateSecretToRegions", SECRET, ctx(), "ImplicitDeny"),
    # adoption
    ("adopt an untagged secret without the marker", "secretsmanager:TagResource", SECRET,
     ctx(request_tags=OWN), "ImplicitDeny"),
    ("adopt a secret marked adoptable", "secretsmanager:TagResource", SECRET,
     ctx(MARKED, request_tags=OWN), "Allow"),
    ("adopt a marked secret for another cluster", "secretsmanager:TagResource", SECRET,
     ctx(MARKED, request_tags=OTHER), "Deny"),
    ("adopt a marked secret and add other tags", "secretsmanager:TagResource", SECRET,
     ctx(MARKED, request_tags={**OWN, "team": "shop"}), "ImplicitDeny"),
    ("tag an untagged secret without the owner tag", "secretsmanager:TagResource", SECRET,
     ctx(MARKED, request_tags={"team": "shop"}), "ImplicitDeny"),
    ("re-claim a secret this cluster released", "secretsmanager:TagResource", SECRET,
     ctx({"rotor.dev/released-from": "prod/shop/db"}, request_tags=OWN), "Allow"),
    ("re-claim a secret another cluster released", "secretsmanager:TagResource", SECRET,
     ctx({"rotor.dev/released-from": "staging/shop/db"}, request_tags=OWN), "ImplicitDeny"),
    ("mark own secret released (deletionPolicy Retain)", "secretsmanager:TagResource", SECRET,
     ctx(OWN, request_tags={"rotor.dev/released-from": "prod/shop/db"}), "Allow"),
    ("marker spelled differently", "secretsmanager:TagResource", SECRET,
     ctx({"rotor.dev/adoptable": "yes"}, request_tags=OWN), "ImplicitDeny"),
    # tags on owned secrets
    ("converge declared tags on own secret", "secretsmanager:TagResource", SECRET,
     ctx(OWN, request_tags={"team": "shop"}), "Allow"),
    ("re-tag own secret to another object of this cluster", "secretsmanager:TagResource", SECRET,
     ctx(OWN, request_tags={"rotor.dev/owner": "prod/other/x"}), "Allow"),
    ("re-label own secret to another cluster", "secretsmanager:TagResource", SECRET,
     ctx(OWN, request_tags=OTHER), "Deny"),
    ("re-label another cluster's secret to this one", "secretsmanager:TagResource", SECRET,
     ctx(OTHER, request_tags=OWN), "Deny"),
    ("tag another cluster's secret", "secretsmanager:TagResource", SECRET,
     ctx(OTHER, request_tags={"team": "shop"}), "ImplicitDeny"),
    ("untag owner of own secret (deletionPolicy Retain)", "secretsmanager:UntagResource", SECRET,
     ctx(OWN, untag=["rotor.dev/owner"]), "Allow"),
    ("untag a dropped declared tag", "secretsmanager:UntagResource", SECRET, ctx(OWN, untag=["team"]), "Allow"),
    ("untag owner of another cluster's secret", "secretsmanager:UntagResource", SECRET,
     ctx(OTHER, untag=["rotor.dev/owner"]), "Deny"),
    ("untag anything on another cluster's secret", "secretsmanager:UntagResource", SECRET,
     ctx(OTHER, untag=["team"]), "ImplicitDeny"),
    # resource policies
    ("put a policy that blocks public access", "secretsmanager:PutResourcePolicy", SECRET,
     ctx(OWN, **{"secretsmanager:BlockPublicPolicy": "true"}), "Allow"),
    ("put a policy without BlockPublicPolicy", "secretsmanager:PutResourcePolicy", SECRET,
     ctx(OWN, **{"secretsmanager:BlockPublicPolicy": "false"}), "ImplicitDeny"),
    # rotation functions
    ("invoke an AWS-template rotation function", "lambda:InvokeFunction",
     f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:SecretsManagerRDSMySQLRotationSingleUser", {}, "Allow"),
    ("invoke a lower-case secretsmanager function", "lambda:InvokeFunction",
     f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:secretsmanager-shop-db", {}, "Allow"),
    ("invoke rotor's rotator", "lambda:InvokeFunction",
     f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:rotor-rotator-mysql:live", {}, "Allow"),
    ("invoke any other function", "lambda:InvokeFunction",
     f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:billing", {}, "ImplicitDeny"),
    ("invoke a rotation function in another account", "lambda:InvokeFunction",
     f"arn:aws:lambda:{REGION}:999999999999:function:SecretsManagerX", {}, "ImplicitDeny"),
    # KMS
    ("create a key owned by this cluster", "kms:CreateKey", "*",
     ctx(request_tags=OWN, standalone=False, **{"kms:KeySpec": "SYMMETRIC_DEFAULT",
                                               "kms:KeyUsage": "ENCRYPT_DECRYPT"}), "Allow"),
    ("create a key without the owner tag", "kms:CreateKey", "*",
     ctx(standalone=False, **{"kms:KeySpec": "SYMMETRIC_DEFAULT", "kms:KeyUsage": "ENCRYPT_DECRYPT"}),
     "ImplicitDeny"),
    ("create an asymmetric key", "kms:CreateKey", "*",
     ctx(request_tags=OWN, standalone=False, **{"kms:KeySpec": "RSA_2048", "kms:KeyUsage": "SIGN_VERIFY"}),
     "ImplicitDeny"),
    ("tag inside CreateKey", "kms:TagResource", "*", ctx(request_tags=OWN, standalone=False), "Allow"),
    ("tag another cluster's key", "kms:TagResource", KEY, ctx(OTHER, request_tags=OWN, standalone=False), "Deny"),
    ("re-tag own key", "kms:TagResource", KEY, ctx(OWN, request_tags=OWN, standalone=False), "ImplicitDeny"),
    ("describe any key of the account", "kms:DescribeKey", KEY, {}, "Allow"),
    ("read any key's tags", "kms:ListResourceTags", KEY, {}, "Allow"),
    ("list keys", "kms:ListKeys", "*", {}, "Allow"),
    ("delete alias of own key", "kms:DeleteAlias", KEY, ctx(OWN, standalone=False), "Allow"),
    ("schedule deletion of own key", "kms:ScheduleKeyDeletion", KEY, ctx(OWN, standalone=False), "Allow"),
    ("schedule deletion of another cluster's key", "kms:ScheduleKeyDeletion", KEY,
     ctx(OTHER, standalone=False), "ImplicitDeny"),
    ("schedule deletion of an untagged key", "kms:ScheduleKeyDeletion", KEY, {}, "ImplicitDeny"),
    ("create alias: alias half", "kms:CreateAlias", ALIAS, {}, "Allow"),
    ("create alias: own key half", "kms:CreateAlias", KEY, ctx(OWN, standalone=False), "Allow"),
    ("create alias on another cluster's key", "kms:CreateAlias", KEY, ctx(OTHER, standalone=False),
     "ImplicitDeny"),
    ("delete alias of an untagged key", "kms:DeleteAlias", KEY, {}, "ImplicitDeny"),
    ("decrypt through Secrets Manager", "kms:Decrypt", KEY, VIA_SM, "Allow"),
    ("generate a data key through Secrets Manager", "kms:GenerateDataKey", KEY, VIA_SM, "Allow"),
    ("encrypt through Secrets Manager (UpdateSecret, replicas)", "kms:Encrypt", KEY, VIA_SM, "Allow"),
    ("decrypt directly", "kms:Decrypt", KEY, {}, "ImplicitDeny"),
    ("decrypt through another service", "kms:Decrypt", KEY,
     {"kms:ViaService": f"s3.{REGION}.amazonaws.com"}, "ImplicitDeny"),
    # SQS
    ("receive from the events queue", "sqs:ReceiveMessage", f"arn:aws:sqs:{REGION}:{ACCOUNT}:rotor-events", {},
     "Allow"),
    ("delete from the events queue", "sqs:DeleteMessage", f"arn:aws:sqs:{REGION}:{ACCOUNT}:rotor-events", {},
     "Allow"),
    ("receive from another queue", "sqs:ReceiveMessage", f"arn:aws:sqs:{REGION}:{ACCOUNT}:orders", {},
     "ImplicitDeny"),
    ("send to the events queue", "sqs:SendMessage", f"arn:aws:sqs:{REGION}:{ACCOUNT}:rotor-events", {},
     "ImplicitDeny"),
    # nothing broader than asked
    ("random passwords are generated locally", "secretsmanager:GetRandomPassword", "*", {}, "ImplicitDeny"),
    ("no new secret versions", "secretsmanager:PutSecretValue", SECRET, ctx(OWN), "ImplicitDeny"),
]


class Decisions(unittest.TestCase):
    def setUp(self):
        text = POLICY_PATH.read_text().replace("CLUSTER_NAME", "prod").replace("ACCOUNT_ID", ACCOUNT)
        self.policy = load_policy(text)

    def test_table(self):
        for description, action, resource, context, expected in CASES:
            with self.subTest(description):
                self.assertEqual(decide(self.policy, action, resource, context), expected)

    def test_every_needed_action_has_an_allowed_case(self):
        allowed = {action for _, action, _, _, expected in CASES if expected == "Allow"}
        self.assertEqual(ALLOWED_ACTIONS - allowed, set())


def secret_arn(name):
    return f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{name}-AbCdEf"


# One batch of secrets, each with the context of GetSecretValue on it.
BATCH = {
    secret_arn("shop/db"): ctx(OWN, standalone=False),
    secret_arn("shop/api"): ctx({"rotor.dev/owner": "prod/shop/api"}, standalone=False),
    secret_arn("staging/db"): ctx(OTHER, standalone=False),
    secret_arn("prod-eu/db"): ctx({"rotor.dev/owner": "prod-eu/shop/db"}, standalone=False),
    secret_arn("untagged"): ctx(standalone=False),
    secret_arn("adoptable"): ctx(MARKED, standalone=False),
    secret_arn("released"): ctx({"rotor.dev/released-from": "prod/shop/db"}, standalone=False),
}
OWN_IN_BATCH = {secret_arn("shop/db"), secret_arn("shop/api")}


def instantiate(template_text):
    return load_policy(template_text.replace("CLUSTER_NAME", "prod").replace("ACCOUNT_ID", ACCOUNT))


class BatchReads(unittest.TestCase):
    """BatchGetSecretValue on "*" reads no value GetSecretValue would not."""

    def setUp(self):
        self.policy = instantiate(POLICY_PATH.read_text())

    def test_only_this_clusters_values_come_back(self):
        # rotor sends ARNs, never Filters; with Filters the answer must be the
        # same (ListSecrets is allowed anyway, for the sweep).
        for filters in (False, True):
            with self.subTest(filters=filters):
                result = batch_get_secret_value(self.policy, BATCH, filters=filters)
                self.assertIsNotNone(result, "the call itself is denied")
                values, errors = result
                self.assertEqual(values, OWN_IN_BATCH)
                self.assertEqual(errors, set(BATCH) - OWN_IN_BATCH)

    def test_values_match_get_secret_value_one_by_one(self):
        values, _ = batch_get_secret_value(self.policy, BATCH) or (set(), set())
        one_by_one = {arn for arn, c in BATCH.items() if decide(self.policy, GET_VALUE, arn, c) == "Allow"}
        self.assertEqual(values, one_by_one)

    def test_widening_is_caught(self):
        """Policies that would leak values through a batch fail the checks."""

        def get_value_on_batch_statement(sids):
            sids["BatchReadOwnSecretValues"]["Action"].append(GET_VALUE)

        def owner_condition_dropped(sids):
            del sids["ReadOwnedSecrets"]["Condition"]

        def get_value_on_everything(sids):
            sids["ReadOwnedSecrets"]["Resource"] = "*"
            del sids["ReadOwnedSecrets"]["Condition"]

        for change in (get_value_on_batch_statement, owner_condition_dropped, get_value_on_everything):
            with self.subTest(change.__name__):
                template = load_policy()
                change({s["Sid"]: s for s in template["Statement"]})
                values, _ = batch_get_secret_value(instantiate(json.dumps(template)), BATCH)
                self.assertGreater(values, OWN_IN_BATCH, "the widened policy should leak")
                self.assertNotEqual(batch_read_problems(template), [])


class Evaluator(unittest.TestCase):
    """The evaluator itself, on IAM's documented rules."""

    def test_explicit_deny_wins_and_default_is_deny(self):
        policy = {"Statement": [
            {"Effect": "Allow", "Action": "s:A", "Resource": "*"},
            {"Effect": "Deny", "Action": "s:A", "Resource": "arn:x"},
        ]}
        self.assertEqual(decide(policy, "s:A", "arn:y"), "Allow")
        self.assertEqual(decide(policy, "s:A", "arn:x"), "Deny")
        self.assertEqual(decide(policy, "s:B", "arn:y"), "ImplicitDeny")

    def test_missing_keys(self):
        self.assertFalse(condition_holds("StringEquals", "k", "v", {}))
        self.assertFalse(condition_holds("StringLike", "k", "v*", {}))
        self.assertTrue(condition_holds("StringNotLike", "k", "v*", {}))
        self.assertTrue(condition_holds("StringLikeIfExists", "k", "v*", {}))
        self.assertTrue(condition_holds("ForAllValues:StringEquals", "k", ["v"], {}))
        self.assertFalse(condition_holds("ForAnyValue:StringEquals", "k", ["v"], {}))
        self.assertTrue(condition_holds("Null", "k", "true", {}))
        self.assertFalse(condition_holds("Null", "k", "false", {}))

    def test_values(self):
        self.assertTrue(condition_holds("StringLike", "k", "prod/*", {"k": "prod/a/b"}))
        self.assertFalse(condition_holds("StringLike", "k", "prod/*", {"k": "prod-eu/a/b"}))
        self.assertFalse(condition_holds("StringNotLike", "k", ["a*", "b*"], {"k": "b1"}))
        self.assertTrue(condition_holds("ForAllValues:StringEquals", "k", ["a"], {"k": ["a", "a"]}))
        self.assertFalse(condition_holds("ForAllValues:StringEquals", "k", ["a"], {"k": ["a", "b"]}))
        self.assertTrue(condition_holds("ForAnyValue:StringEquals", "k", ["a"], {"k": ["b", "a"]}))
        self.assertTrue(condition_holds("Bool", "k", "true", {"k": "True"}))
        self.assertTrue(condition_holds("ArnLike", "k", "arn:aws:s:*:1:x/*", {"k": "arn:aws:s:r:1:x/y"}))
        self.assertTrue(condition_holds("StringEqualsIfExists", "k", "v", {"k": "v"}))
        self.assertFalse(condition_holds("StringEqualsIfExists", "k", "v", {"k": "w"}))

    def test_unmodelled_operators_are_refused(self):
        with self.assertRaises(ValueError):
            condition_holds("NumericLessThan", "k", "1", {"k": "0"})
        with self.assertRaises(ValueError):
            statement_applies({"Effect": "Allow", "NotAction": "s:A", "Resource": "*"}, "s:A", "*", {})


if __name__ == "__main__":
    sys.exit(0 if unittest.main(exit=False, verbosity=1).result.wasSuccessful() else 1)

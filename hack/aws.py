"""Small AWS helper for the demo, talking to the test bed's moto with boto3
(which moto's server installs). It plays the parts rotor does not: an
existing secret to mirror, and a rotation Lambda moving AWSCURRENT."""

import json
import sys
import uuid

import boto3


def client(endpoint):
    return boto3.client(
        "secretsmanager",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def current_version(sm, secret_id):
    stages = sm.describe_secret(SecretId=secret_id)["VersionIdsToStages"]
    return next(v for v, s in stages.items() if "AWSCURRENT" in s)


def main():
    endpoint, cmd, secret_id = sys.argv[1:4]
    sm = client(endpoint)
    if cmd == "create":
        owner, value = sys.argv[4], sys.argv[5]
        sm.create_secret(
            Name=secret_id, SecretString=value, Tags=[{"Key": "rotor.dev/owner", "Value": owner}]
        )
        print(current_version(sm, secret_id))
    elif cmd == "rotate":
        # What a rotation Lambda does: createSecret (AWSPENDING), then finishSecret.
        old = current_version(sm, secret_id)
        value = json.loads(sm.get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")["SecretString"])
        value["password"] = uuid.uuid4().hex[:20]
        new = str(uuid.uuid4())
        sm.put_secret_value(
            SecretId=secret_id, ClientRequestToken=new, SecretString=json.dumps(value), VersionStages=["AWSPENDING"]
        )
        sm.update_secret_version_stage(
            SecretId=secret_id, VersionStage="AWSCURRENT", MoveToVersionId=new, RemoveFromVersionId=old
        )
        print(new)
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()

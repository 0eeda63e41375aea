"""Small AWS helper for the demo, talking to the test bed's moto with boto3
(which moto's server installs): shows what rotor made in AWS (never the
value), and plays a rotation Lambda moving AWSCURRENT."""

import json
import sys
import uuid

import boto3


def client(service, endpoint):
    return boto3.client(
        service,
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
    sm = client("secretsmanager", endpoint)
    if cmd == "describe":
        d = sm.describe_secret(SecretId=secret_id)
        key = client("kms", endpoint).describe_key(KeyId=d["KmsKeyId"])["KeyMetadata"]
        policy = sm.get_resource_policy(SecretId=secret_id).get("ResourcePolicy")
        print(f"  ARN:         {d['ARN']}")
        print(f"  KMS key:     {key['Arn']} ({key['KeySpec']}, {key['KeyState']})")
        tags = ", ".join("{}={}".format(t["Key"], t["Value"]) for t in d.get("Tags", []))
        print(f"  tags:        {tags}")
        print(f"  policy:      {'set' if policy else 'none'}")
        rules = d.get("RotationRules", {})
        print(f"  rotation:    {d.get('RotationEnabled')} {rules.get('ScheduleExpression')} "
              f"window {rules.get('Duration')} via {d.get('RotationLambdaARN', '-').split(':')[-1]}")
        print(f"  AWSCURRENT:  {current_version(sm, secret_id)}")
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

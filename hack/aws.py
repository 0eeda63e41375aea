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
    elif cmd == "function":
        # Deploys rotor's rotation function (its zip) as a moto Lambda; the
        # test bed's moto runs the real bootstrap. secret_id is the name here.
        zip_path, ca_file = sys.argv[4:6]
        role = client("iam", endpoint).create_role(
            RoleName=f"{secret_id}-role",
            AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]}),
        )["Role"]["Arn"]
        with open(zip_path, "rb") as f:
            code = f.read()
        print(client("lambda", endpoint).create_function(
            FunctionName=secret_id, Runtime="provided.al2023", Handler="bootstrap", Role=role,
            Code={"ZipFile": code}, Timeout=30, MemorySize=128,
            Environment={"Variables": {"DB_CA_FILE": ca_file}},
        )["FunctionArn"])
    elif cmd == "versions":
        # The version ids and stages, to show a rotation without its values.
        for version, stages in sm.describe_secret(SecretId=secret_id)["VersionIdsToStages"].items():
            print(f"  {version}: {', '.join(stages)}")
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()

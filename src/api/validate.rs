//! Spec checks the OpenAPI schema cannot express (the 1.20 API server has no
//! CEL). Each problem names the field and how to fix it.

use serde_json::Value;

use super::{OWNER_TAG, RolloutMode, RotatedSecretSpec, duration, schedule};

/// Secret data keys: alphanumerics, `-`, `_` and `.` (Kubernetes' rule).
pub fn is_valid_data_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key != "."
        && key != ".."
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Returns every problem found, or `Ok` for a valid spec.
pub fn validate(spec: &RotatedSecretSpec) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();

    if duration::parse(&spec.refresh_interval).is_none() {
        problems.push(format!(
            "refreshInterval {:?} is not a duration such as 30s, 1m or 1h",
            spec.refresh_interval
        ));
    }

    let sm = &spec.secrets_manager;
    for key in sm.tags.keys() {
        if key == OWNER_TAG {
            problems.push(format!(
                "secretsManager.tags must not set {OWNER_TAG}: rotor manages it"
            ));
        } else if key.starts_with("aws:") {
            problems.push(format!(
                "secretsManager.tags key {key:?} uses the reserved aws: prefix"
            ));
        }
    }
    if let Some(kms) = &sm.kms_key {
        match (&kms.id, &kms.alias) {
            (Some(_), Some(_)) => {
                problems.push("secretsManager.kmsKey: set either id or alias, not both".to_owned())
            }
            // `kmsKey: {}` (what server-side apply leaves behind after the
            // user removes id and alias) means the AWS-managed key.
            (None, None) if kms.create => problems
                .push("secretsManager.kmsKey.create needs alias (the name of the key to create)".to_owned()),
            (Some(_), None) if kms.create => problems
                .push("secretsManager.kmsKey.create needs alias (the name of the key to create)".to_owned()),
            _ => {}
        }
    }
    if let Some(init) = &sm.initial_value {
        if init.template.is_some() && init.string.is_some() {
            problems.push("secretsManager.initialValue: set template or string, not both".to_owned());
        }
        if init.string.is_some() && !init.generate.is_empty() {
            problems
                .push("secretsManager.initialValue.generate needs a JSON template, not string".to_owned());
        }
    }

    if let Some(init) = &sm.initial_value {
        for g in &init.generate {
            if let Err(e) = crate::aws::initial::check(g) {
                problems.push(e);
            }
        }
        if init.template.as_ref().is_some_and(|t| !t.is_object()) {
            problems.push("secretsManager.initialValue.template must be a JSON object".to_owned());
        }
    }
    if let Some(policy) = &sm.resource_policy
        && let Err(e) = check_policy(policy)
    {
        problems.push(format!("secretsManager.resourcePolicy: {e}"));
    }
    let mut regions = std::collections::BTreeSet::new();
    for r in &sm.replica_regions {
        if !regions.insert(&r.region) {
            problems.push(format!("secretsManager.replicaRegions lists {} twice", r.region));
        }
        if Some(&r.region) == sm.region.as_ref() {
            problems.push(format!(
                "secretsManager.replicaRegions: {} is the secret's own region",
                r.region
            ));
        }
    }
    if let Some(rotation) = &spec.rotation
        && let Err(e) = schedule::validate(&rotation.schedule, rotation.window.as_deref())
    {
        problems.push(e);
    }

    for key in spec.target.template.keys() {
        if !is_valid_data_key(key) {
            problems.push(format!(
                "target.template key {key:?} is not a valid Secret data key (letters, digits, '-', '_', '.')"
            ));
        }
    }

    match spec.rollout.mode {
        RolloutMode::Explicit if spec.rollout.targets.is_empty() => {
            problems.push("rollout.mode Explicit needs at least one entry in rollout.targets".to_owned())
        }
        RolloutMode::Auto | RolloutMode::Disabled if !spec.rollout.targets.is_empty() => {
            problems.push(format!(
                "rollout.targets is only used with mode Explicit (mode is {:?})",
                spec.rollout.mode
            ))
        }
        _ => {}
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// A resource policy must be an IAM policy document and must not grant
/// access to everyone: rotor puts policies with BlockPublicPolicy, and
/// checking here names the problem before any AWS call.
fn check_policy(policy: &Value) -> Result<(), String> {
    let Value::Object(doc) = policy else {
        return Err("must be a JSON object (an IAM policy document)".to_owned());
    };
    if let Some(v) = doc.get("Version")
        && v != "2012-10-17"
        && v != "2008-10-17"
    {
        return Err(format!("Version must be \"2012-10-17\", not {v}"));
    }
    let statements = match doc.get("Statement") {
        Some(Value::Array(list)) if !list.is_empty() => list.iter().collect::<Vec<_>>(),
        Some(obj @ Value::Object(_)) => vec![obj],
        _ => return Err("needs a non-empty Statement".to_owned()),
    };
    for (i, st) in statements.iter().enumerate() {
        let Value::Object(st) = st else {
            return Err(format!("Statement[{i}] must be an object"));
        };
        match st.get("Effect").and_then(Value::as_str) {
            Some("Allow") | Some("Deny") => {}
            _ => return Err(format!("Statement[{i}].Effect must be Allow or Deny")),
        }
        if !st.contains_key("Action") && !st.contains_key("NotAction") {
            return Err(format!("Statement[{i}] needs Action"));
        }
        let everyone = |p: &Value| match p {
            Value::String(s) => s == "*",
            Value::Object(m) => m
                .get("AWS")
                .is_some_and(|a| a == "*" || a.as_array().is_some_and(|l| l.iter().any(|x| x == "*"))),
            _ => false,
        };
        if st.get("Effect").and_then(Value::as_str) == Some("Allow")
            && st.get("Principal").is_some_and(everyone)
            && !st.contains_key("Condition")
        {
            return Err(format!(
                "Statement[{i}] allows everyone (Principal \"*\") without a Condition; public policies are blocked"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> RotatedSecretSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn minimal_spec_is_valid() {
        assert_eq!(validate(&spec("secretsManager: {name: a/b}")), Ok(()));
        assert_eq!(validate(&spec("secretsManager: {name: a/b, kmsKey: {}}")), Ok(()));
    }

    #[test]
    fn reports_each_problem() {
        let cases = [
            (
                "secretsManager: {name: a}\nrefreshInterval: 1d",
                "refreshInterval",
            ),
            (
                "secretsManager: {name: a, tags: {rotor.dev/owner: x}}",
                "rotor manages it",
            ),
            ("secretsManager: {name: a, tags: {'aws:x': y}}", "reserved aws:"),
            (
                "secretsManager: {name: a, kmsKey: {id: k, alias: alias/k}}",
                "not both",
            ),
            ("secretsManager: {name: a, kmsKey: {create: true}}", "needs alias"),
            (
                "secretsManager: {name: a, kmsKey: {id: k, create: true}}",
                "needs alias",
            ),
            (
                "secretsManager: {name: a}\ntarget: {template: {'a b': x}}",
                "not a valid Secret data key",
            ),
            (
                "secretsManager: {name: a}\nrollout: {mode: Explicit}",
                "at least one",
            ),
            (
                "secretsManager: {name: a}\nrollout: {targets: [{kind: Deployment, name: x}]}",
                "only used with mode Explicit",
            ),
            (
                "secretsManager: {name: a, initialValue: {string: s, template: {a: b}}}",
                "template or string",
            ),
            (
                "secretsManager: {name: a, resourcePolicy: {Statement: []}}",
                "non-empty Statement",
            ),
            (
                "secretsManager: {name: a, resourcePolicy: {Version: '2020', Statement: {}}}",
                "Version",
            ),
            (
                "secretsManager: {name: a, resourcePolicy: {Statement: [{Effect: Allow, Principal: '*', Action: '*'}]}}",
                "public policies are blocked",
            ),
            (
                "secretsManager: {name: a, replicaRegions: [{region: eu-west-1}, {region: eu-west-1}]}",
                "twice",
            ),
            (
                "secretsManager: {name: a, initialValue: {generate: [{key: p, length: 3}]}}",
                "shorter than",
            ),
            (
                "secretsManager: {name: a}\nrotation: {lambdaArn: x, schedule: rate(1 hour)}",
                "every 4 hours",
            ),
        ];
        for (yaml, needle) in cases {
            let problems = validate(&spec(yaml)).expect_err(yaml);
            assert!(
                problems.iter().any(|p| p.contains(needle)),
                "{yaml}: {problems:?}"
            );
        }
    }

    #[test]
    fn data_keys() {
        assert!(is_valid_data_key("DATABASE_URL"));
        assert!(is_valid_data_key("tls.crt"));
        assert!(!is_valid_data_key("a/b"));
        assert!(!is_valid_data_key(".."));
        assert!(!is_valid_data_key(""));
    }
}

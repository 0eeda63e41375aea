//! Spec checks the OpenAPI schema cannot express (the 1.20 API server has no
//! CEL). Each problem names the field and how to fix it.

use serde_json::Value;

use super::{OWNER_TAG, RolloutMode, RotatedSecretSpec, SecretsManagerSpec, duration, initial, schedule};

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
    check_refresh(spec, &mut problems);
    let sm = &spec.secrets_manager;
    check_tags(&sm.tags, &mut problems);
    check_kms_key(sm, &mut problems);
    check_initial_value(sm, &mut problems);
    check_policy_and_replicas(sm, &mut problems);
    if let Some(rotation) = &spec.rotation
        && let Err(e) = schedule::validate(&rotation.schedule, rotation.window.as_deref())
    {
        problems.push(e);
    }

    check_template(spec, &mut problems);
    check_target(&spec.target, &mut problems);
    check_rollout(spec, &mut problems);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

fn check_refresh(spec: &RotatedSecretSpec, problems: &mut Vec<String>) {
    match duration::parse(&spec.refresh_interval) {
        Some(d) if d <= MAX_REFRESH_INTERVAL => {}
        Some(_) => problems.push(format!(
            "refreshInterval {:?} is longer than 24h; rotations would go unnoticed for too long",
            spec.refresh_interval
        )),
        None => problems.push(format!(
            "refreshInterval {:?} is not a duration such as 30s, 1m or 1h",
            spec.refresh_interval
        )),
    }
}

fn check_kms_key(sm: &SecretsManagerSpec, problems: &mut Vec<String>) {
    if let Some(kms) = &sm.kms_key {
        if let Some(id) = &kms.id
            && !is_kms_key_ref(id)
        {
            problems.push(format!(
                "secretsManager.kmsKey.id {:?} is not a key id, key ARN, alias name or alias ARN",
                truncated(id)
            ));
        }
        if kms.create && kms.alias.as_deref().is_some_and(|a| a.starts_with("alias/aws/")) {
            problems.push(
                "secretsManager.kmsKey.alias: alias/aws/ names are reserved for AWS-managed keys; \
                 pick another alias to create"
                    .to_owned(),
            );
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
}

fn check_initial_value(sm: &SecretsManagerSpec, problems: &mut Vec<String>) {
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
            if let Err(e) = initial::check(g) {
                problems.push(e);
            }
        }
        if init.template.as_ref().is_some_and(|t| !t.value().is_object()) {
            problems.push("secretsManager.initialValue.template must be a JSON object".to_owned());
        }
        let size =
            init.string.as_ref().map_or(0, String::len) + init.template.as_ref().map_or(0, |t| t.len());
        if size > MAX_SECRET_STRING {
            problems.push(format!(
                "secretsManager.initialValue is {size} bytes; Secrets Manager takes at most {MAX_SECRET_STRING}"
            ));
        }
    }
}

fn check_policy_and_replicas(sm: &SecretsManagerSpec, problems: &mut Vec<String>) {
    if let Some(policy) = &sm.resource_policy
        && policy.to_string().len() > MAX_POLICY
    {
        problems.push(format!(
            "secretsManager.resourcePolicy is longer than the {MAX_POLICY} characters Secrets Manager takes"
        ));
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
        if let Some(id) = &r.kms_key_id
            && !is_kms_key_ref(id)
        {
            problems.push(format!(
                "secretsManager.replicaRegions[{}].kmsKeyId {:?} is not a key id, key ARN, alias name or alias ARN",
                r.region,
                truncated(id)
            ));
        }
    }
}

fn check_template(spec: &RotatedSecretSpec, problems: &mut Vec<String>) {
    for (key, source) in &spec.target.template {
        if !is_valid_data_key(key) {
            problems.push(format!(
                "target.template key {:?} is not a valid Secret data key (letters, digits, '-', '_', '.')",
                truncated(key)
            ));
        } else if let Err(e) = crate::template::check(key, source) {
            problems.push(e.to_string());
        }
    }
}

fn check_rollout(spec: &RotatedSecretSpec, problems: &mut Vec<String>) {
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
}

/// The longest `refreshInterval`: a rotation may go unnoticed this long.
pub const MAX_REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// Secrets Manager's limits: SecretString size, resource policy length, tags.
const MAX_SECRET_STRING: usize = 65_536;
const MAX_POLICY: usize = 20_480;
/// 50 tags per secret, one of them rotor's owner tag.
const MAX_TAGS: usize = 49;

/// Secret types whose data rotor writes and no other controller acts on.
/// `kubernetes.io/service-account-token` would have the token controller
/// fill in a token for any ServiceAccount, `helm.sh/release.v1` is read by
/// Helm as release state: a tenant must not be able to make rotor write those.
pub const ALLOWED_SECRET_TYPES: [&str; 5] = [
    "Opaque",
    "kubernetes.io/basic-auth",
    "kubernetes.io/ssh-auth",
    "kubernetes.io/tls",
    "kubernetes.io/dockerconfigjson",
];

/// Shortens a value quoted in a message (the value is the tenant's spec,
/// not secret material, but messages must stay short).
fn truncated(s: &str) -> String {
    let mut s = s.to_owned();
    super::conditions::truncate(&mut s, 80);
    s
}

/// AWS tag rules: the count, lengths, characters and reserved prefixes, so
/// a refused tag is named here instead of failing a write half-way.
fn check_tags(tags: &std::collections::BTreeMap<String, String>, problems: &mut Vec<String>) {
    if tags.len() > MAX_TAGS {
        problems.push(format!(
            "secretsManager.tags has {} entries; AWS allows 50 per secret and rotor uses one",
            tags.len()
        ));
    }
    let allowed = |s: &str| {
        s.chars()
            .all(|c| c.is_alphanumeric() || c == ' ' || "_.:/=+-@".contains(c))
    };
    for (key, value) in tags {
        let shown = truncated(key);
        if key == OWNER_TAG {
            problems.push(format!(
                "secretsManager.tags must not set {OWNER_TAG}: rotor manages it"
            ));
        } else if key.to_ascii_lowercase().starts_with("aws:") {
            problems.push(format!(
                "secretsManager.tags key {shown:?} uses the reserved aws: prefix"
            ));
        } else if key.is_empty() || key.chars().count() > 128 || !allowed(key) {
            problems.push(format!(
                "secretsManager.tags key {shown:?} must be 1 to 128 letters, digits, spaces or _.:/=+-@"
            ));
        } else if value.chars().count() > 256 || !allowed(value) {
            problems.push(format!(
                "secretsManager.tags[{shown:?}] must be at most 256 letters, digits, spaces or _.:/=+-@"
            ));
        }
    }
}

/// A KMS key reference as Secrets Manager takes it: a key id (UUID or
/// multi-Region `mrk-` id), a key ARN, an alias name, or an alias ARN.
pub fn is_kms_key_ref(s: &str) -> bool {
    let id = |k: &str| {
        let k = k.strip_prefix("mrk-").unwrap_or(k);
        !k.is_empty() && k.len() <= 64 && k.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
    };
    let alias = |a: &str| {
        a.strip_prefix("alias/").is_some_and(|n| {
            !n.is_empty()
                && n.len() <= 250
                && n.chars().all(|c| c.is_ascii_alphanumeric() || "/_-".contains(c))
        })
    };
    if let Some(rest) = s.strip_prefix("arn:") {
        let parts: Vec<&str> = rest.splitn(5, ':').collect();
        return parts.len() == 5
            && parts[0].starts_with("aws")
            && parts[1] == "kms"
            && !parts[2].is_empty()
            && parts[3].len() == 12
            && parts[3].chars().all(|c| c.is_ascii_digit())
            && (parts[4].strip_prefix("key/").is_some_and(id) || alias(parts[4]));
    }
    id(s) || alias(s)
}

/// Keys under these prefixes are acted on by Kubernetes, Helm or rotor
/// itself; a tenant's labels and annotations on the Secret must not be.
fn is_protected_key(key: &str, label: bool) -> bool {
    let Some((prefix, name)) = key.split_once('/') else {
        return false;
    };
    let under = |domain: &str| prefix == domain || prefix.ends_with(&format!(".{domain}"));
    if prefix == "app.kubernetes.io" {
        // The recommended, purely descriptive labels are fine; managed-by
        // is rotor's own.
        return label && name == "managed-by";
    }
    under("kubernetes.io") || under("k8s.io") || under("helm.sh") || under("rotor.dev")
}

fn check_target(target: &super::TargetSpec, problems: &mut Vec<String>) {
    if !ALLOWED_SECRET_TYPES.contains(&target.type_.as_str()) {
        problems.push(format!(
            "target.type {:?} is not allowed; use one of {}",
            truncated(&target.type_),
            ALLOWED_SECRET_TYPES.join(", ")
        ));
    }
    for key in target.labels.keys() {
        if is_protected_key(key, true) {
            problems.push(format!(
                "target.labels {:?}: keys under kubernetes.io, k8s.io, helm.sh and rotor.dev are reserved",
                truncated(key)
            ));
        }
    }
    if target.labels.get("owner").is_some_and(|v| v == "helm") {
        problems.push("target.labels owner=helm marks Helm release storage; remove it".to_owned());
    }
    for key in target.annotations.keys() {
        if is_protected_key(key, false) {
            problems.push(format!(
                "target.annotations {:?}: keys under kubernetes.io, k8s.io, helm.sh and rotor.dev are reserved",
                truncated(key)
            ));
        }
    }
}

/// Whether the spec's problems include the mirror itself (target name,
/// type, labels, templates): then the Secret is left as it is.
pub fn blocks_mirror(spec: &RotatedSecretSpec) -> bool {
    let mut problems = Vec::new();
    check_target(&spec.target, &mut problems);
    !problems.is_empty()
        || spec
            .target
            .template
            .iter()
            .any(|(key, source)| !is_valid_data_key(key) || crate::template::check(key, source).is_err())
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

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Specs with arbitrary strings where tenants write them: validation
        /// answers Ok or a list of problems; never a panic.
        #[test]
        fn any_spec_validates_or_names_problems(
            refresh in ".{0,30}",
            tag_key in ".{0,140}",
            tag_value in ".{0,300}",
            kms_id in ".{0,80}",
            target_type in ".{0,60}",
            label in ".{0,80}",
            template in ".{0,80}",
            schedule in "rate\\([0-9]{0,22} days\\)|.{0,30}",
        ) {
            let spec: RotatedSecretSpec = serde_json::from_value(serde_json::json!({
                "secretsManager": {"name": "a/b", "tags": {tag_key: tag_value}, "kmsKey": {"id": kms_id},
                                   "replicaRegions": [{"region": "eu-west-1", "kmsKeyId": kms_id}]},
                "rotation": {"lambdaArn": "arn:aws:lambda:us-east-1:123456789012:function:f", "schedule": schedule},
                "target": {"type": target_type, "labels": {label.clone(): "v"}, "annotations": {label: "v"},
                           "template": {"K": template}},
                "refreshInterval": refresh,
            }))
            .unwrap();
            if let Err(problems) = validate(&spec) {
                proptest::prop_assert!(!problems.is_empty());
            }
            let _ = blocks_mirror(&spec);
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

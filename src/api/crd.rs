//! The generated CustomResourceDefinition and the hand-written schema pieces
//! that derive cannot express.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use schemars::{Schema, SchemaGenerator, json_schema};

use super::RotatedSecret;

/// The CRD as `rotor crd` prints it and `crds/rotatedsecret.yaml` holds it.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = serde_json::to_value(RotatedSecret::crd()).expect("a CRD always serializes");
    if let Some(spec) = crd.pointer_mut("/spec/versions/0/schema/openAPIV3Schema/properties/spec") {
        strip_defaults_under_optional(spec);
        bound_sizes(spec, MAX_STRING);
        for (path, max) in [
            (
                "/properties/target/properties/template/additionalProperties",
                crate::template::MAX_SOURCE,
            ),
            (
                "/properties/secretsManager/properties/initialValue/properties/string",
                65_536,
            ),
        ] {
            if let Some(node) = spec.pointer_mut(path) {
                node["maxLength"] = max.into();
            }
        }
        if let Some(tags) = spec.pointer_mut("/properties/secretsManager/properties/tags") {
            tags["maxProperties"] = 49.into();
        }
    }
    if let Some(condition) = crd.pointer_mut(
        "/spec/versions/0/schema/openAPIV3Schema/properties/status/properties/conditions/items/properties",
    ) {
        describe_condition_fields(condition);
    }
    serde_json::from_value(crd).expect("still a CRD")
}

/// Descriptions for the fields of a status condition (those of
/// `metav1.Condition`), for `kubectl explain`. Only where the type's doc
/// comments give none: a doc comment on [`super::Condition`] wins.
fn describe_condition_fields(properties: &mut serde_json::Value) {
    for (field, description) in [
        (
            "type",
            "Condition type: `Ready`, `KmsKeyReady`, `SecretReady`, `RotationConfigured`, `Synced` or `RolledOut`.",
        ),
        (
            "reason",
            "Why the condition is in its status, in CamelCase (e.g. `Ready`, `AccessDenied`, `InvalidSpec`).",
        ),
        (
            "message",
            "What happened, for people; never holds secret material.",
        ),
        (
            "observedGeneration",
            "The object's metadata.generation when the condition was set.",
        ),
        (
            "lastTransitionTime",
            "When the condition last changed status (RFC 3339).",
        ),
    ] {
        if let Some(node) = properties.get_mut(field).and_then(|n| n.as_object_mut()) {
            node.entry("description").or_insert_with(|| description.into());
        }
    }
}

/// Schema defaults only where the parent object always exists. A default
/// inside an optional object (`rotation.rotateImmediately`) is filled in by
/// the API server, and then keeps that object alive when a user removes it
/// with server-side apply (`rotation: {}`, which fails validation). rotor's
/// types apply the same defaults when reading, so nothing is lost.
fn strip_defaults_under_optional(schema: &mut serde_json::Value) {
    fn strip_all(schema: &mut serde_json::Value) {
        if let Some(obj) = schema.as_object_mut() {
            obj.remove("default");
            for (_, child) in obj.iter_mut() {
                strip_all(child);
            }
        } else if let Some(list) = schema.as_array_mut() {
            list.iter_mut().for_each(strip_all);
        }
    }
    let required: Vec<String> = schema
        .get("required")
        .and_then(|r| serde_json::from_value(r.clone()).ok())
        .unwrap_or_default();
    let Some(props) = schema.get_mut("properties").and_then(|p| p.as_object_mut()) else {
        return;
    };
    for (name, prop) in props.iter_mut() {
        let always_there = required.contains(name) || prop.get("default").is_some();
        if prop.get("type").and_then(|t| t.as_str()) != Some("object") && prop.get("items").is_none() {
            continue;
        }
        if always_there {
            strip_defaults_under_optional(prop);
        } else {
            let own_default = prop.as_object_mut().and_then(|o| o.remove("default"));
            strip_all(prop);
            if let (Some(d), Some(o)) = (own_default, prop.as_object_mut()) {
                o.insert("default".into(), d);
            }
        }
    }
}

/// Caps for every string, list and map of the spec that has none of its
/// own: the API server then refuses oversized objects before rotor spends
/// anything on them (rotor checks the same limits again; 1.20 has no CEL).
const MAX_STRING: usize = 4096;
const MAX_ITEMS: usize = 64;
const MAX_PROPERTIES: usize = 64;

fn bound_sizes(schema: &mut serde_json::Value, max_string: usize) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    // Formats the API server does not know (schemars' uint32) are warned
    // about by current servers; ranges already bound the value.
    if obj
        .get("format")
        .and_then(|f| f.as_str())
        .is_some_and(|f| !matches!(f, "int32" | "int64" | "date-time" | "byte"))
    {
        obj.remove("format");
    }
    let free_form = obj.contains_key("x-kubernetes-preserve-unknown-fields");
    match obj.get("type").and_then(|t| t.as_str()) {
        Some("string") if !obj.contains_key("maxLength") && !obj.contains_key("enum") => {
            obj.insert("maxLength".into(), max_string.into());
        }
        Some("array") if !obj.contains_key("maxItems") => {
            obj.insert("maxItems".into(), MAX_ITEMS.into());
        }
        Some("object")
            if !free_form
                && obj.contains_key("additionalProperties")
                && !obj.contains_key("maxProperties") =>
        {
            obj.insert("maxProperties".into(), MAX_PROPERTIES.into());
        }
        _ => {}
    }
    for key in ["properties"] {
        if let Some(props) = obj.get_mut(key).and_then(|p| p.as_object_mut()) {
            props.values_mut().for_each(|p| bound_sizes(p, max_string));
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = obj.get_mut(key) {
            bound_sizes(child, max_string);
        }
    }
}

pub fn crd_yaml() -> String {
    let yaml = serde_yaml::to_string(&crd()).expect("a CRD always serializes");
    format!("# Generated by `rotor crd`; do not edit.\n{yaml}")
}

/// A free-form JSON object (policies, value templates). Nullable, so that
/// removing it with server-side apply (which may send `null`) is accepted.
pub fn preserve_unknown_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// 0 (delete without recovery) or 7 to 30 days, as DeleteSecret takes it.
pub fn recovery_window_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "integer",
        "format": "int64",
        "minimum": 0,
        "maximum": 30,
        "anyOf": [
            { "minimum": 0, "maximum": 0 },
            { "minimum": 7, "maximum": 30 },
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checked-in CRD, and the chart's copy, are exactly what `rotor crd` prints.
    #[test]
    fn checked_in_crd_matches_generated() {
        for file in ["crds/rotatedsecret.yaml", "charts/rotor/files/rotatedsecret.yaml"] {
            let path = format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
            let on_disk = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(
                on_disk == crd_yaml(),
                "{file} drifted from the types: run `make crd`"
            );
        }
    }

    #[test]
    fn crd_names_match_contract() {
        let crd = crd();
        assert_eq!(crd.spec.group, "rotor.dev");
        assert_eq!(crd.spec.names.kind, "RotatedSecret");
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&["rotsec".to_owned()][..])
        );
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["rotor".to_owned()][..])
        );
        let version = &crd.spec.versions[0];
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        let cols: Vec<_> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            cols,
            ["Ready", "Reason", "AWS secret", "Version", "Last rotated", "Age"]
        );
        let column = |name: &str| {
            version
                .additional_printer_columns
                .iter()
                .flatten()
                .find(|c| c.name == name)
                .unwrap()
        };
        assert_eq!(
            column("Reason").json_path,
            r#".status.conditions[?(@.type=="Ready")].reason"#
        );
        // The long VersionId only with `-o wide`; the rest always.
        assert_eq!(column("Version").priority, Some(1));
        for name in ["Ready", "Reason", "AWS secret", "Last rotated", "Age"] {
            assert_eq!(column(name).priority.unwrap_or(0), 0, "{name}");
        }
    }

    /// `kubectl explain` shows a description for every field of spec and
    /// status, at any depth (list items and map values included).
    #[test]
    fn every_field_has_a_description() {
        fn walk(path: &str, node: &serde_json::Value, missing: &mut Vec<String>) {
            let Some(obj) = node.as_object() else { return };
            let described = obj
                .get("description")
                .and_then(|d| d.as_str())
                .is_some_and(|d| !d.trim().is_empty());
            if !described {
                missing.push(path.to_owned());
            }
            if let Some(props) = obj.get("properties").and_then(|p| p.as_object()) {
                for (k, v) in props {
                    walk(&format!("{path}.{k}"), v, missing);
                }
            }
            // Items and map values are described by their field; look inside.
            for key in ["items", "additionalProperties"] {
                if let Some(child) = obj.get(key).and_then(|c| c.as_object()) {
                    if let Some(props) = child.get("properties").and_then(|p| p.as_object()) {
                        for (k, v) in props {
                            walk(&format!("{path}[].{k}"), v, missing);
                        }
                    }
                }
            }
        }
        let json = serde_json::to_value(crd()).unwrap();
        let root = json.pointer("/spec/versions/0/schema/openAPIV3Schema").unwrap();
        let mut missing = Vec::new();
        for top in ["spec", "status"] {
            walk(top, &root["properties"][top], &mut missing);
        }
        assert!(missing.is_empty(), "no description: {missing:#?}");
        assert!(root["description"].as_str().is_some_and(|d| !d.is_empty()));
    }

    #[test]
    fn no_defaults_inside_optional_objects() {
        let json = serde_json::to_value(crd()).unwrap();
        let spec = json
            .pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties")
            .unwrap();
        assert!(
            spec["rotation"]["properties"]["rotateImmediately"]
                .get("default")
                .is_none()
        );
        assert!(
            spec["secretsManager"]["properties"]["kmsKey"]["properties"]["create"]
                .get("default")
                .is_none()
        );
        // Where the parent always exists, defaults stay.
        assert_eq!(spec["refreshInterval"]["default"], "1m");
        assert_eq!(
            spec["secretsManager"]["properties"]["deletionPolicy"]["default"],
            "Retain"
        );
        assert_eq!(spec["rollout"]["properties"]["mode"]["default"], "Auto");
    }

    /// Every string, list and map a tenant writes in spec is bounded.
    #[test]
    fn every_spec_field_is_bounded() {
        fn walk(path: &str, node: &serde_json::Value, unbounded: &mut Vec<String>) {
            let Some(obj) = node.as_object() else { return };
            let bounded = |k: &str| obj.contains_key(k);
            match obj.get("type").and_then(|t| t.as_str()) {
                Some("string") if !bounded("maxLength") && !bounded("enum") => {
                    unbounded.push(path.to_owned())
                }
                Some("array") if !bounded("maxItems") => unbounded.push(path.to_owned()),
                Some("object")
                    if bounded("additionalProperties")
                        && !bounded("maxProperties")
                        && !bounded("x-kubernetes-preserve-unknown-fields") =>
                {
                    unbounded.push(path.to_owned())
                }
                _ => {}
            }
            assert!(
                obj.get("format").is_none_or(|f| f == "int32" || f == "int64"),
                "{path}: unknown format {:?}",
                obj.get("format")
            );
            if let Some(props) = obj.get("properties").and_then(|p| p.as_object()) {
                for (k, v) in props {
                    walk(&format!("{path}.{k}"), v, unbounded);
                }
            }
            for key in ["items", "additionalProperties"] {
                if let Some(child) = obj.get(key) {
                    walk(&format!("{path}[]"), child, unbounded);
                }
            }
        }
        let json = serde_json::to_value(crd()).unwrap();
        let spec = json
            .pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec")
            .unwrap();
        let mut unbounded = Vec::new();
        walk("spec", spec, &mut unbounded);
        assert!(unbounded.is_empty(), "unbounded: {unbounded:?}");
        assert_eq!(
            spec.pointer("/properties/secretsManager/properties/tags/maxProperties"),
            Some(&serde_json::json!(49))
        );
    }

    /// The 1.20 API server rejects `null` inside `enum` with a misleading error.
    #[test]
    fn no_null_in_enums() {
        let json = serde_json::to_string(&crd()).unwrap();
        assert!(
            !json.contains("null]") && !json.contains("[null"),
            "null in an enum"
        );
    }
}

//! The initial value of a secret rotor creates: the `initialValue` template
//! with generated passwords filled in. Generated locally with the thread-local
//! CSPRNG (ChaCha, seeded from the OS) following GetRandomPassword's rules, so
//! creating a secret costs no extra AWS call.

use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};
use serde_json::Value;

use crate::api::{CompactJson, GeneratedValue, InitialValue};
use crate::redact::Sensitive;

const LOWER: &str = "abcdefghijklmnopqrstuvwxyz";
const UPPER: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const DIGITS: &str = "0123456789";
/// The punctuation GetRandomPassword draws from.
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// Builds the SecretString; errors name the field, never a value.
pub fn render(init: &InitialValue) -> Result<Option<Sensitive<String>>, String> {
    if let Some(s) = &init.string {
        return Ok(Some(Sensitive(s.clone())));
    }
    let mut object = match init.template.as_ref().map(CompactJson::value) {
        None if init.generate.is_empty() => return Ok(None),
        None => serde_json::Map::new(),
        Some(Value::Object(map)) => map,
        Some(_) => return Err("secretsManager.initialValue.template must be a JSON object".to_owned()),
    };
    for g in &init.generate {
        let password = generate(g)?;
        object.insert(g.key.clone(), Value::String(password));
    }
    Ok(Some(Sensitive(Value::Object(object).to_string())))
}

/// Checks a generate entry without generating anything.
pub fn check(g: &GeneratedValue) -> Result<(), String> {
    let classes = classes(g);
    if classes.is_empty() {
        return Err(format!(
            "secretsManager.initialValue.generate[{:?}]: excludeCharacters/excludePunctuation leave no characters",
            g.key
        ));
    }
    if g.require_each_included_type && (g.length as usize) < classes.len() {
        return Err(format!(
            "secretsManager.initialValue.generate[{:?}]: length {} is shorter than the {} character types \
             requireEachIncludedType asks for",
            g.key,
            g.length,
            classes.len()
        ));
    }
    Ok(())
}

fn classes(g: &GeneratedValue) -> Vec<Vec<char>> {
    let excluded = g.exclude_characters.as_deref().unwrap_or_default();
    let mut sets = vec![LOWER, UPPER, DIGITS];
    if !g.exclude_punctuation {
        sets.push(PUNCTUATION);
    }
    sets.into_iter()
        .map(|set| set.chars().filter(|c| !excluded.contains(*c)).collect::<Vec<_>>())
        .filter(|set| !set.is_empty())
        .collect()
}

fn generate(g: &GeneratedValue) -> Result<String, String> {
    check(g)?;
    let classes = classes(g);
    let all: Vec<char> = classes.iter().flatten().copied().collect();
    let mut rng = rand::rng();
    let mut out: Vec<char> = Vec::with_capacity(g.length as usize);
    if g.require_each_included_type {
        for class in &classes {
            out.push(*class.choose(&mut rng).expect("classes are non-empty"));
        }
    }
    while out.len() < g.length as usize {
        out.push(all[rng.random_range(0..all.len())]);
    }
    out.shuffle(&mut rng);
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gen_spec(yaml: &str) -> GeneratedValue {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn seed_example_password() {
        let g = gen_spec(
            "{key: password, length: 20, excludeCharacters: \"\\\"@/\\\\\", requireEachIncludedType: true}",
        );
        for _ in 0..200 {
            let p = generate(&g).unwrap();
            assert_eq!(p.chars().count(), 20);
            assert!(!p.contains(['"', '@', '/', '\\']), "{p}");
            assert!(p.chars().any(|c| c.is_ascii_lowercase()));
            assert!(p.chars().any(|c| c.is_ascii_uppercase()));
            assert!(p.chars().any(|c| c.is_ascii_digit()));
            assert!(p.chars().any(|c| PUNCTUATION.contains(c)));
        }
    }

    #[test]
    fn defaults_and_no_punctuation() {
        let g = gen_spec("{key: k, excludePunctuation: true}");
        assert_eq!(g.length, 32);
        let p = generate(&g).unwrap();
        assert_eq!(p.len(), 32);
        assert!(p.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(p, generate(&g).unwrap(), "random");
    }

    #[test]
    fn impossible_specs_are_errors() {
        let none_left = gen_spec(&format!(
            "{{key: k, excludePunctuation: true, excludeCharacters: '{LOWER}{UPPER}{DIGITS}'}}"
        ));
        assert!(check(&none_left).unwrap_err().contains("leave no characters"));
        let short = gen_spec("{key: k, length: 3}");
        assert!(check(&short).unwrap_err().contains("shorter than the 4"));
    }

    #[test]
    fn renders_template_with_generated_keys() {
        let init: InitialValue = serde_yaml::from_str(
            "{template: {username: admin, port: 3306}, generate: [{key: password, length: 20}]}",
        )
        .unwrap();
        let s = render(&init).unwrap().unwrap();
        let v: Value = serde_json::from_str(s.expose()).unwrap();
        assert_eq!(v["username"], "admin");
        assert_eq!(v["port"], 3306);
        assert_eq!(v["password"].as_str().unwrap().len(), 20);
    }

    #[test]
    fn plain_string_and_nothing() {
        let init: InitialValue = serde_yaml::from_str("{string: abc}").unwrap();
        assert_eq!(render(&init).unwrap().unwrap().expose(), "abc");
        let init: InitialValue = serde_yaml::from_str("{}").unwrap();
        assert!(render(&init).unwrap().is_none());
    }
}

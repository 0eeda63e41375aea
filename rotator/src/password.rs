//! New passwords: from the operating system's CSPRNG (through `rand`'s
//! ThreadRng, a ChaCha CSPRNG seeded from the OS), over printable ASCII minus
//! `EXCLUDE_CHARACTERS`, with at least one character of each class left in
//! the alphabet (lower, upper, digit, punctuation), like GetRandomPassword's
//! `RequireEachIncludedType`.
//!
//! Every printable ASCII character is safe for both engines as rotor sends
//! them: PostgreSQL gets a SCRAM verifier (base64, no escaping at all), and
//! MySQL/MariaDB get a quoted literal under `NO_BACKSLASH_ESCAPES` where `'`
//! is doubled. Space is never used. The default exclusions (`/@"'\`, as in
//! AWS's templates) keep passwords safe to paste into URLs and shells.

use rand::Rng;

use crate::secret::Password;

pub const DEFAULT_LENGTH: usize = 32;
pub const MIN_LENGTH: usize = 16;
pub const MAX_LENGTH: usize = 128;
pub const DEFAULT_EXCLUDE: &str = "/@\"'\\";

const CLASSES: [fn(u8) -> bool; 4] = [
    |c| c.is_ascii_lowercase(),
    |c| c.is_ascii_uppercase(),
    |c| c.is_ascii_digit(),
    |c| c.is_ascii_punctuation(),
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AlphabetError {
    #[error("EXCLUDE_CHARACTERS leaves no lower-case letter, upper-case letter or digit")]
    MissingClass,
}

/// Printable ASCII (`!`..=`~`, no space) minus `exclude`.
pub fn alphabet(exclude: &str) -> Result<Vec<u8>, AlphabetError> {
    let set: Vec<u8> = (b'!'..=b'~').filter(|c| !exclude.contains(*c as char)).collect();
    if CLASSES[..3].iter().any(|class| !set.iter().any(|c| class(*c))) {
        return Err(AlphabetError::MissingClass);
    }
    Ok(set)
}

/// A new password of `length` characters from `alphabet`, with at least one
/// character of each class the alphabet has.
pub fn generate(length: usize, alphabet: &[u8]) -> Password {
    assert!(
        (MIN_LENGTH..=MAX_LENGTH).contains(&length),
        "password length checked by Config"
    );
    let classes: Vec<_> = CLASSES
        .iter()
        .filter(|class| alphabet.iter().any(|c| class(*c)))
        .collect();
    let mut rng = rand::rng();
    loop {
        let pw: String = (0..length)
            .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
            .collect();
        // Rejection sampling keeps the distribution uniform over the
        // passwords that have every class; with >= 16 characters it rarely
        // takes more than two tries.
        if classes.iter().all(|class| pw.bytes().any(**class)) {
            return Password::new(pw);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_alphabet_excludes_awss_defaults_and_space() {
        let a = alphabet(DEFAULT_EXCLUDE).unwrap();
        for c in DEFAULT_EXCLUDE.bytes().chain([b' ']) {
            assert!(!a.contains(&c), "{:?} must be excluded", c as char);
        }
        assert_eq!(a.len(), 94 - 5);
        assert!(a.iter().all(|c| c.is_ascii_graphic()));
    }

    #[test]
    fn empty_exclusion_is_every_printable_ascii() {
        assert_eq!(alphabet("").unwrap().len(), 94);
    }

    #[test]
    fn alphabet_must_keep_letters_and_digits() {
        assert_eq!(alphabet("0123456789"), Err(AlphabetError::MissingClass));
        // Punctuation may all go.
        let a = alphabet("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~").unwrap();
        assert!(a.iter().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn passwords_have_every_class_and_only_the_alphabet() {
        let a = alphabet(DEFAULT_EXCLUDE).unwrap();
        for len in [MIN_LENGTH, DEFAULT_LENGTH, MAX_LENGTH] {
            for _ in 0..200 {
                let pw = generate(len, &a);
                let s = pw.expose();
                assert_eq!(s.len(), len);
                assert!(s.bytes().all(|c| a.contains(&c)));
                for class in CLASSES {
                    assert!(s.bytes().any(class));
                }
            }
        }
        let alnum = alphabet("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~").unwrap();
        assert!(
            generate(16, &alnum)
                .expose()
                .bytes()
                .all(|c| c.is_ascii_alphanumeric())
        );
    }

    #[test]
    fn passwords_differ() {
        let a = alphabet(DEFAULT_EXCLUDE).unwrap();
        let set: std::collections::HashSet<String> =
            (0..1000).map(|_| generate(16, &a).expose().to_owned()).collect();
        assert_eq!(set.len(), 1000);
    }
}

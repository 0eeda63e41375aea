//! Keeping secret material out of everything rotor prints or stores.

use std::fmt;

/// Holds secret material; `Debug` prints nothing of it, and there is no
/// `Display`, so it cannot slip into a log line or an error by formatting.
#[derive(Clone, PartialEq, Eq)]
pub struct Sensitive<T>(pub T);

impl<T> fmt::Debug for Sensitive<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<T> Sensitive<T> {
    pub fn expose(&self) -> &T {
        &self.0
    }
}

/// Replaces every occurrence of each needle in `message` (needles shorter
/// than 4 bytes are too common to scrub without destroying the message and
/// too short to be a credential) and caps the length.
pub fn scrub<'a>(message: &str, needles: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = message.to_owned();
    for needle in needles {
        if needle.len() >= 4 && out.contains(needle) {
            out = out.replace(needle, "<redacted>");
        }
    }
    crate::api::conditions::truncate(&mut out, 512);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_value() {
        let s = Sensitive("hunter2-password".to_owned());
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{:?}", Some(&s)), "Some(<redacted>)");
    }

    #[test]
    fn scrub_removes_values() {
        let msg = scrub("bad value 's3cr3t!' at line 1", ["s3cr3t!", "ab"]);
        assert_eq!(msg, "bad value '<redacted>' at line 1");
    }
}

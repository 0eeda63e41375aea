//! ARNs, parsed once: `arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE`.
//! Used for secret ARNs (events, the pinned ARN in status), KMS key and
//! alias ARNs (which key a secret names, whose account a key is in).

/// The pieces of an ARN; `resource` keeps any `/` or `:` it contains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arn<'a> {
    pub service: &'a str,
    pub region: &'a str,
    pub account: &'a str,
    pub resource: &'a str,
}

impl<'a> Arn<'a> {
    pub fn parse(arn: &'a str) -> Option<Self> {
        let mut it = arn.splitn(6, ':');
        let (Some("arn"), Some(_partition), Some(service), Some(region), Some(account), Some(resource)) =
            (it.next(), it.next(), it.next(), it.next(), it.next(), it.next())
        else {
            return None;
        };
        (!service.is_empty() && !resource.is_empty()).then_some(Self {
            service,
            region,
            account,
            resource,
        })
    }

    /// A Secrets Manager secret ARN: `secret:NAME` (partial) or
    /// `secret:NAME-XXXXXX` (full, with six random characters).
    pub fn secret(arn: &'a str) -> Option<SecretArn<'a>> {
        let arn = Self::parse(arn).filter(|a| a.service == "secretsmanager" && !a.region.is_empty())?;
        let resource = arn.resource.strip_prefix("secret:").filter(|r| !r.is_empty())?;
        Some(SecretArn {
            region: arn.region,
            resource,
        })
    }
}

/// A secret's region and what follows `secret:`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecretArn<'a> {
    pub region: &'a str,
    /// The name plus, in full ARNs, `-` and six random characters.
    pub resource: &'a str,
}

impl SecretArn<'_> {
    /// Whether this ARN (full or partial) names the secret called `name`.
    pub fn names(&self, name: &str) -> bool {
        self.resource == name || self.name() == Some(name)
    }

    /// The secret's name, when this is a full ARN (Secrets Manager appends
    /// `-` and six alphanumerics to the name).
    pub fn name(&self) -> Option<&str> {
        let cut = self.resource.len().checked_sub(7)?;
        let (name, suffix) = (self.resource.get(..cut)?, &self.resource.as_bytes()[cut..]);
        (!name.is_empty() && suffix[0] == b'-' && suffix[1..].iter().all(u8::is_ascii_alphanumeric))
            .then_some(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_pieces() {
        let a = Arn::parse("arn:aws:kms:us-east-1:123456789012:key/abc").unwrap();
        assert_eq!(
            (a.service, a.region, a.account, a.resource),
            ("kms", "us-east-1", "123456789012", "key/abc")
        );
        // The resource keeps its colons.
        let s = Arn::parse("arn:aws-cn:secretsmanager:cn-north-1:1:secret:a:b").unwrap();
        assert_eq!(s.resource, "secret:a:b");
        for bad in [
            "",
            "arn",
            "arn:aws:kms:r:1",
            "arn:aws::r:1:x",
            "arn:aws:kms:r:1:",
            "nra:aws:kms:r:1:x",
        ] {
            assert_eq!(Arn::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn secret_arns_name_their_secret() {
        let full = Arn::secret("arn:aws:secretsmanager:eu-west-1:1:secret:app/db-AbC123").unwrap();
        assert_eq!(full.region, "eu-west-1");
        assert_eq!(full.name(), Some("app/db"));
        assert!(full.names("app/db"));
        assert!(!full.names("app"));
        let partial = Arn::secret("arn:aws:secretsmanager:eu-west-1:1:secret:app/db").unwrap();
        assert!(partial.names("app/db"));
        assert_eq!(partial.name(), None);
        // Not a secret ARN.
        assert_eq!(Arn::secret("arn:aws:kms:eu-west-1:1:key/x"), None);
        assert_eq!(Arn::secret("arn:aws:secretsmanager::1:secret:x"), None);
        assert_eq!(Arn::secret("arn:aws:secretsmanager:r:1:secret:"), None);
        // A suffix that is not six alphanumerics is part of the name.
        let odd = Arn::secret("arn:aws:secretsmanager:r:1:secret:a-b_c-d").unwrap();
        assert_eq!(odd.name(), None);
        assert!(odd.names("a-b_c-d"));
    }
}

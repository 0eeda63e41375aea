//! The database side: log in, change a password, set up the alternating
//! partner. TLS is verified (rustls, aws-lc-rs) unless a secret says
//! `"ssl": false`; there is no fallback from TLS to plaintext.

mod mysql;
mod postgres;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::error::ErrorKind;
use crate::secret::{Engine, Password};

/// Where and as whom to log in.
#[derive(Debug, Clone, Copy)]
pub struct Login<'a> {
    pub host: &'a str,
    pub port: u16,
    pub dbname: Option<&'a str>,
    pub ssl: bool,
    pub username: &'a str,
    pub password: &'a Password,
}

/// The CAs database certificates are verified against.
#[derive(Clone)]
pub struct Tls {
    /// The PEM given with `DB_CA_FILE`, if any (MySQL's driver reads PEM).
    pem: Option<Arc<Vec<u8>>>,
    rustls: Arc<ClientConfig>,
}

impl Tls {
    /// Trusts the PEM bundle at `ca_file`, or else the Mozilla roots.
    pub fn new(ca_file: Option<&Path>) -> Result<Tls, String> {
        let mut roots = RootCertStore::empty();
        let pem = match ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| format!("DB_CA_FILE {}: {e}", path.display()))?;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| format!("DB_CA_FILE {}: {e}", path.display()))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("DB_CA_FILE {}: {e}", path.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!("DB_CA_FILE {} holds no certificate", path.display()));
                }
                Some(Arc::new(pem))
            }
            None => {
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                None
            }
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let rustls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS configuration: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Tls {
            pem,
            rustls: Arc::new(rustls),
        })
    }
}

/// Database operations for one engine.
#[derive(Clone)]
pub struct Db {
    pub engine: Engine,
    pub tls: Tls,
    pub timeout: Duration,
}

impl Db {
    fn err(&self, action: &'static str, detail: impl Into<String>) -> ErrorKind {
        ErrorKind::Db {
            engine: self.engine,
            action,
            detail: detail.into(),
        }
    }

    /// Logs in and runs `SELECT 1`.
    pub async fn check_login(&self, login: &Login<'_>) -> Result<(), ErrorKind> {
        match self.engine {
            Engine::Postgres => postgres::check_login(self, login).await,
            Engine::Mysql | Engine::Mariadb => mysql::check_login(self, login).await,
        }
    }

    /// Logs in as `login` and changes that user's own password.
    pub async fn set_own_password(&self, login: &Login<'_>, new: &Password) -> Result<(), ErrorKind> {
        match self.engine {
            Engine::Postgres => postgres::set_own_password(self, login, new).await,
            Engine::Mysql | Engine::Mariadb => mysql::set_own_password(self, login, new).await,
        }
    }

    /// Logs in as the master user and makes `target` a login user with the
    /// password `new` and the privileges of `source` (its alternating
    /// partner), creating it if needed. Grants are copied on every call.
    pub async fn set_partner(
        &self,
        master: &Login<'_>,
        source: &str,
        target: &str,
        new: &Password,
    ) -> Result<(), ErrorKind> {
        match self.engine {
            Engine::Postgres => postgres::set_partner(self, master, source, target, new).await,
            Engine::Mysql | Engine::Mariadb => mysql::set_partner(self, master, source, target, new).await,
        }
    }
}

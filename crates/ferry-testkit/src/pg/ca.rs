//! A throw-away certificate authority for tests: it issues the certificates of private
//! PostgreSQL servers started with TLS ([`super::PgServer::start_with_tls`]), and stands for
//! the wrong CA in tests of refused certificates.

use super::error::PgServerError;

/// A throw-away certificate authority: issues test servers' certificates, and stands for
/// the wrong CA in tests of refused certificates.
pub struct TestCa {
    cert_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new CA with its own key; `name` is its common name.
    pub fn new(name: &str) -> Result<TestCa, PgServerError> {
        let key = rcgen::KeyPair::generate().map_err(cert("generating a CA key"))?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(cert("a CA certificate"))?;
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let cert_pem = params.self_signed(&key).map_err(cert("signing a CA certificate"))?.pem();
        Ok(TestCa { cert_pem, issuer: rcgen::Issuer::new(params, key) })
    }

    /// The CA's certificate (PEM): the root certificate clients check servers against.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A server certificate for `names` (host names or IP addresses) and its private key,
    /// both PEM.
    pub fn server_cert(&self, names: &[&str]) -> Result<(String, String), PgServerError> {
        let key = rcgen::KeyPair::generate().map_err(cert("generating a server key"))?;
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).map_err(cert("a server certificate"))?;
        params.distinguished_name.push(rcgen::DnType::CommonName, "ferry test PostgreSQL server");
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let signed = params.signed_by(&key, &self.issuer).map_err(cert("signing a server certificate"))?;
        Ok((signed.pem(), key.serialize_pem()))
    }
}

fn cert(what: &str) -> impl FnOnce(rcgen::Error) -> PgServerError + '_ {
    move |e| PgServerError::Command { what: format!("making a test certificate ({what})"), detail: e.to_string() }
}

//! Tests of the domain CA, enrollment and mutual TLS: certificates issued by a CA made in a
//! temporary directory, checked in real handshakes over loopback TCP (who each side is,
//! strangers, revoked machines and the servers they issued, expiry, addresses in names).

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

struct Domain {
    _dir: tempfile::TempDir,
    ca: Ca,
}

fn domain() -> Domain {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path(), "test").unwrap();
    Domain { _dir: dir, ca }
}

/// Enrolls machine `m` the way a Node Manager does: keys made here, requests signed there.
fn enroll(ca: &Ca, m: &str) -> (Credentials, MachineIssuer) {
    let leaf = request(&Identity::Machine(m.into())).unwrap();
    let issuing = request(&Identity::Machine(m.into())).unwrap();
    let chain = ca.sign_leaf(&leaf.csr_pem, &Identity::Machine(m.into())).unwrap();
    let issuer_pem = ca.sign_issuer(&issuing.csr_pem, m).unwrap();
    let creds = Credentials {
        chain_pem: chain,
        key_pem: leaf.key_pem,
        ca_pem: ca.cert_pem().into(),
        revoked: Revocations::default(),
    };
    (creds, MachineIssuer::from_pem(&issuer_pem, &issuing.key_pem).unwrap())
}

/// Serves one TLS echo of the peer's identity; returns what the client read or its error.
async fn talk(server: &Credentials, revoked: Revocations, client: rustls::ClientConfig) -> Result<String, String> {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let mut listener = TlsListener::new(tcp, server.server_config(revoked).unwrap(), false).unwrap();
    let srv = tokio::spawn(async move {
        let (mut conn, info) = axum::serve::Listener::accept(&mut listener).await;
        let who = info.peer.map(|p| p.identity.uri()).unwrap_or_default();
        let _ = conn.write_all(who.as_bytes()).await;
        let _ = conn.shutdown().await;
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let r = async {
        let mut s = connector.connect(name, tcp).await.map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.map_err(|e| e.to_string())?;
        if out.is_empty() {
            return Err("the server closed the connection".to_string());
        }
        Ok(out)
    };
    let r = tokio::time::timeout(std::time::Duration::from_secs(5), r).await.unwrap_or(Err("timeout".into()));
    srv.abort();
    r
}

#[test]
fn identities_round_trip_through_their_uri() {
    for id in [Identity::Admin, Identity::Machine("m-1.x".into()), Identity::Server("ms_1".into())] {
        assert_eq!(Identity::from_uri(&id.uri()), Some(id));
    }
    for bad in ["", "ferry:", "ferry:machine:", "ferry:cluster:c", "http://x", "ferry:admin:x"] {
        assert_eq!(Identity::from_uri(bad), None, "{bad}");
    }
}

#[test]
fn the_ca_is_created_once_with_a_private_key_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let a = Ca::load_or_create(dir.path(), "d").unwrap();
    let mode = std::fs::metadata(dir.path().join("ca.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let b = Ca::load_or_create(dir.path(), "d").unwrap();
    assert_eq!(a.cert_pem(), b.cert_pem(), "a second start must load the same CA");
    // A corrupt key is an error that names the file, not a new CA.
    std::fs::write(dir.path().join("ca.key"), "junk").unwrap();
    let err = Ca::load_or_create(dir.path(), "d").err().expect("corrupt key");
    assert!(err.to_string().contains("ca.key"), "{err}");
}

#[test]
fn the_ca_names_the_holder_whatever_the_request_asked_for() {
    let d = domain();
    // A request that claims to be the admin, signed for machine b: the certificate says b.
    let r = request(&Identity::Admin).unwrap();
    let pem = d.ca.sign_leaf(&r.csr_pem, &Identity::Machine("b".into())).unwrap();
    let creds = Credentials {
        chain_pem: pem,
        key_pem: r.key_pem,
        ca_pem: d.ca.cert_pem().into(),
        revoked: Revocations::default(),
    };
    assert_eq!(creds.identity().unwrap(), Identity::Machine("b".into()));
    assert!(d
        .ca
        .sign_leaf("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", &Identity::Admin)
        .is_err());
    assert!(d.ca.sign_leaf("", &Identity::Admin).is_err());
}

#[tokio::test]
async fn mutual_tls_names_each_side_and_refuses_strangers() {
    let d = domain();
    let (nm_b, issuer_b) = enroll(&d.ca, "b");
    let admin = d.ca.issue(&Identity::Admin).unwrap();
    let none = Revocations::default();

    // The admin calls machine b's Node Manager: each side sees the other's identity.
    let got =
        talk(&nm_b, none.clone(), admin.client_config(Expect::Identity(Identity::Machine("b".into()))).unwrap()).await;
    assert_eq!(got.as_deref(), Ok("ferry:admin"));

    // A server certificate issued by machine b: the chain goes through b's issuing cert.
    let ms1 = issuer_b.issue_server("ms1", d.ca.cert_pem()).unwrap();
    assert_eq!(ms1.identity().unwrap(), Identity::Server("ms1".into()));
    let got = talk(&nm_b, none.clone(), ms1.client_config(Expect::AnyPeer).unwrap()).await;
    assert_eq!(got.as_deref(), Ok("ferry:server:ms1"));

    // Dialling b but reaching c: refused by the client.
    let (nm_c, _) = enroll(&d.ca, "c");
    let got =
        talk(&nm_c, none.clone(), admin.client_config(Expect::Identity(Identity::Machine("b".into()))).unwrap()).await;
    assert!(got.as_ref().is_err_and(|e| e.contains("expected machine b")), "{got:?}");

    // A certificate of another domain's CA: the handshake fails.
    let other = domain();
    let stranger = other.ca.issue(&Identity::Admin).unwrap();
    let got = talk(&nm_b, none.clone(), stranger.client_config(Expect::AnyPeer).unwrap()).await;
    assert!(got.is_err(), "a stranger got in: {got:?}");

    // No client certificate at all: refused.
    let anon = anonymous_client_config(d.ca.cert_pem(), Expect::AnyPeer).unwrap();
    let got = talk(&nm_b, none.clone(), anon).await;
    assert!(got.is_err(), "an anonymous client got in: {got:?}");
}

#[tokio::test]
async fn a_revoked_machine_and_the_servers_it_issued_are_refused() {
    let d = domain();
    let (nm_b, _) = enroll(&d.ca, "b");
    let (nm_c, issuer_c) = enroll(&d.ca, "c");
    let ms1 = issuer_c.issue_server("ms1", d.ca.cert_pem()).unwrap();
    let revoked = Revocations::default();
    let serials = [serial_of(&nm_c.chain_pem).unwrap(), serial_of(&issuer_c.cert_pem).unwrap()];
    revoked.replace(serials.iter().cloned().collect());

    let got = talk(&nm_b, revoked.clone(), nm_c.client_config(Expect::AnyPeer).unwrap()).await;
    assert!(got.is_err(), "revoked machine c got in: {got:?}");
    let got = talk(&nm_b, revoked.clone(), ms1.client_config(Expect::AnyPeer).unwrap()).await;
    assert!(got.is_err(), "a server certificate from revoked machine c got in: {got:?}");
    let got = talk(&nm_b, revoked.clone(), nm_b.client_config(Expect::AnyPeer).unwrap()).await;
    assert_eq!(got.as_deref(), Ok("ferry:machine:b"), "machine b is not revoked");

    // A client refuses to talk to a revoked machine too (the list its credentials carry).
    let mut admin = d.ca.issue(&Identity::Admin).unwrap();
    admin.revoked = revoked.clone();
    let got = talk(&nm_c, Revocations::default(), admin.client_config(Expect::AnyPeer).unwrap()).await;
    assert!(got.is_err(), "a client reached revoked machine c: {got:?}");

    // Machine c enrolled again (rotation): its new certificates are accepted.
    let (nm_c2, issuer_c2) = enroll(&d.ca, "c");
    let got = talk(&nm_b, revoked.clone(), nm_c2.client_config(Expect::AnyPeer).unwrap()).await;
    assert_eq!(got.as_deref(), Ok("ferry:machine:c"));
    let ms1 = issuer_c2.issue_server("ms1", d.ca.cert_pem()).unwrap();
    let got = talk(&nm_b, revoked.clone(), ms1.client_config(Expect::AnyPeer).unwrap()).await;
    assert_eq!(got.as_deref(), Ok("ferry:server:ms1"));
}

#[tokio::test]
async fn an_expired_server_certificate_is_refused() {
    let d = domain();
    let (nm_b, issuer_b) = enroll(&d.ca, "b");
    let short = issuer_b.issue_server_for("ms1", d.ca.cert_pem(), std::time::Duration::from_secs(1)).unwrap();
    let got = talk(&nm_b, Revocations::default(), short.client_config(Expect::AnyPeer).unwrap()).await;
    assert_eq!(got.as_deref(), Ok("ferry:server:ms1"), "valid for a second");
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert!(short.expires_in_s().unwrap() < 0);
    let got = talk(&nm_b, Revocations::default(), short.client_config(Expect::AnyPeer).unwrap()).await;
    assert!(got.is_err(), "an expired certificate got in: {got:?}");
}

#[test]
fn the_ca_mac_proves_the_secret_without_showing_it() {
    let mac = ca_mac("secret", "n1", "CA");
    assert!(ca_mac_ok("secret", "n1", "CA", &mac));
    assert!(!ca_mac_ok("other", "n1", "CA", &mac), "another secret");
    assert!(!ca_mac_ok("secret", "n2", "CA", &mac), "a replayed answer to another nonce");
    assert!(!ca_mac_ok("secret", "n1", "CA2", &mac), "another CA");
    assert!(!mac.contains("secret"));
}

/// The admin's certificate may also name its addresses and host names (so curl accepts it);
/// that changes nothing of who is who: ferry's clients still check the identity alone, and
/// a client that checks the name it dialled accepts exactly the names listed.
#[tokio::test]
async fn addresses_in_a_certificate_do_not_change_who_it_names() {
    use rustls::client::danger::ServerCertVerifier;
    let d = domain();
    let ips: Vec<IpAddr> = vec!["198.18.1.1".parse().unwrap(), "::1".parse().unwrap()];
    let admin = d.ca.issue_named(&Identity::Admin, &ips, &["admin.example".into(), "ferry".into()]).unwrap();
    assert_eq!(admin.identity().unwrap(), Identity::Admin);
    assert_eq!(admin.names().unwrap(), (ips, vec!["ferry".to_string(), "admin.example".to_string()]));
    assert_eq!(d.ca.issue(&Identity::Admin).unwrap().names().unwrap(), (vec![], vec!["ferry".to_string()]));

    // ferry's clients: the identity, whatever address was dialled.
    let (nm_b, _) = enroll(&d.ca, "b");
    let got =
        talk(&admin, Revocations::default(), nm_b.client_config(Expect::Identity(Identity::Admin)).unwrap()).await;
    assert_eq!(got.as_deref(), Ok("ferry:machine:b"));
    let got = talk(
        &admin,
        Revocations::default(),
        nm_b.client_config(Expect::Identity(Identity::Machine("b".into()))).unwrap(),
    )
    .await;
    assert!(got.as_ref().is_err_and(|e| e.contains("expected machine b")), "{got:?}");

    // A client that checks the name it dialled (as curl does).
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots(d.ca.cert_pem()).unwrap()),
        provider,
    )
    .build()
    .unwrap();
    let leaf = &certs(&admin.chain_pem).unwrap()[0];
    for (name, ok) in [
        ("198.18.1.1", true),
        ("::1", true),
        ("admin.example", true),
        ("ferry", true),
        ("198.18.1.2", false),
        ("127.0.0.1", false),
        ("other.example", false),
    ] {
        let n = ServerName::try_from(name).unwrap();
        let r = verifier.verify_server_cert(leaf, &[], &n, &[], UnixTime::now());
        assert_eq!(r.is_ok(), ok, "{name}: {r:?}");
    }
}

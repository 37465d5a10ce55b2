//! TLS for tests: a throwaway CA (rcgen) issuing ECDSA or RSA certificates, HTTPS clients that
//! trust only that CA, and a TLS front (optionally demanding a client certificate) that puts an
//! HTTPS face on a plain backend.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, PKCS_RSA_SHA256,
};

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert: String,
    pub key: String,
}

impl Issued {
    /// Writes `cert.pem` and `key.pem` (or `{stem}.pem`/`{stem}.key`) into `dir`.
    pub fn write(&self, dir: &Path, stem: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        // Write the key first and rename into place, as a renewal tool would.
        for (path, text) in [(&key, &self.key), (&cert, &self.cert)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
        (cert, key)
    }

    /// The leaf certificate, DER.
    pub fn der(&self) -> Vec<u8> {
        rustls_pemfile::certs(&mut self.cert.as_bytes())
            .next()
            .unwrap()
            .unwrap()
            .to_vec()
    }
}

pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
    pub pem: String,
}

pub enum KeyKind {
    Ecdsa,
    Rsa,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        let pem = cert.pem();
        TestCa { cert, key, pem }
    }

    /// A certificate for `names` (DNS names or IP addresses), subject CN `cn`.
    pub fn issue(&self, cn: &str, names: &[&str], kind: KeyKind) -> Issued {
        let key = match kind {
            KeyKind::Ecdsa => KeyPair::generate().unwrap(),
            KeyKind::Rsa => {
                // ring signs with RSA keys but does not make them: openssl does.
                let out = std::process::Command::new("openssl")
                    .args([
                        "genpkey",
                        "-algorithm",
                        "RSA",
                        "-pkeyopt",
                        "rsa_keygen_bits:2048",
                    ])
                    .output()
                    .expect("openssl runs");
                assert!(out.status.success(), "openssl genpkey failed");
                KeyPair::from_pem_and_sign_algo(
                    std::str::from_utf8(&out.stdout).unwrap(),
                    &PKCS_RSA_SHA256,
                )
                .unwrap()
            }
        };
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// An HTTPS client that trusts only `ca_pem`; `tls_info` lets a test see the server's
/// certificate (`reqwest::tls::TlsInfo`).
pub fn https_client(ca_pem: &str) -> reqwest::Client {
    https_builder(ca_pem).build().unwrap()
}

pub fn https_builder(ca_pem: &str) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .tls_info(true)
}

/// The certificate the server presented for `response`'s connection, DER.
pub fn peer_certificate(response: &reqwest::Response) -> Vec<u8> {
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("an HTTPS response")
        .to_vec()
}

/// A TLS front: its address, and how many handshakes it has completed.
pub struct TlsFront {
    pub addr: SocketAddr,
    pub handshakes: Arc<std::sync::atomic::AtomicUsize>,
}

/// Terminates TLS with `issued` and forwards the bytes to `backend`; with `client_ca`, only
/// clients presenting a certificate of that CA get through. Runs on the test's runtime.
pub async fn tls_front(backend: SocketAddr, issued: &Issued, client_ca: Option<&str>) -> TlsFront {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = rustls_pemfile::certs(&mut issued.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut issued.key.as_bytes())
        .unwrap()
        .unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let config = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut ca.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    }
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = handshakes.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let counted = counted.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    TlsFront { addr, handshakes }
}

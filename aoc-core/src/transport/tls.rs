//! Mutual TLS for the HA channel and the client API.
//!
//! Every member and every client holds a certificate signed by the
//! cluster's own certificate authority (CA), and trusts that CA alone. A
//! connection is refused at the TLS handshake when either side lacks such
//! a certificate. Names say who is who:
//!
//! - a member's certificate names `member-<id>.cluster-<cluster id>.aoc`
//!   ([`member_name`]) and `cluster-<cluster id>.aoc` ([`cluster_name`]);
//! - a member connecting to member N checks that N's certificate names
//!   N; a member accepting a connection checks, once the peer has said
//!   which member it is (the `hello` frame), that its certificate names
//!   that member ([`TlsIdentity`] does both), so a member cannot speak for
//!   another;
//! - a client checks that the member it reaches holds a certificate of the
//!   cluster ([`cluster_name`]); members accept any client certificate
//!   their CA signed.
//!
//! [`CertificateAuthority`] generates the CA and the certificates (the
//! `aoc-node certs` command and the tests use it).
//!
//! ```
//! use aoc_core::transport::tls::{CertificateAuthority, TlsIdentity};
//!
//! let ca = CertificateAuthority::generate(7).unwrap();
//! let (cert, key) = ca.issue_member(7, 1).unwrap();
//! let identity = TlsIdentity::from_pem(ca.cert_pem().as_bytes(), cert.as_bytes(), key.as_bytes()).unwrap();
//! assert!(format!("{identity:?}").contains("TlsIdentity"));
//! ```

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

use crate::{Error, Result};

/// The name a member's certificate carries.
pub fn member_name(cluster_id: u64, member_id: u64) -> String {
    format!("member-{member_id}.cluster-{cluster_id}.aoc")
}

/// The name every member certificate of a cluster carries (what clients
/// check).
pub fn cluster_name(cluster_id: u64) -> String {
    format!("cluster-{cluster_id}.aoc")
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(what: &str, e: impl fmt::Display) -> Error {
    Error::config(what, e.to_string())
}

/// A member's or a client's TLS credentials: the cluster's CA, its own
/// certificate chain and key, and the rustls configurations built from
/// them.
#[derive(Clone)]
pub struct TlsIdentity {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("TlsIdentity")
            .field("chain_certificates", &self.chain.len())
            .finish()
    }
}

impl PartialEq for TlsIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.ca == other.ca && self.chain == other.chain
    }
}

impl Eq for TlsIdentity {}

impl TlsIdentity {
    /// The rustls configuration of the accepting side (client
    /// certificates of the cluster's CA required).
    pub(crate) fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// Builds the credentials from PEM: the CA certificate, this side's
    /// certificate (chain) and its private key. The errors name which of
    /// the three is wrong.
    pub fn from_pem(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<Self> {
        let ca = CertificateDer::from_pem_slice(ca_pem)
            .map_err(|e| tls_error("tls.ca", format!("not a PEM certificate: {e}")))?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| tls_error("tls.cert", format!("not a PEM certificate: {e}")))?;
        if chain.is_empty() {
            return Err(tls_error("tls.cert", "no certificate in the file"));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| tls_error("tls.key", format!("not a PEM private key: {e}")))?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone())
            .map_err(|e| tls_error("tls.ca", format!("not a usable CA certificate: {e}")))?;
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| tls_error("tls.ca", e))?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error("tls", e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| tls_error("tls.key", format!("does not match tls.cert: {e}")))?;
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error("tls", e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain.clone(), key)
            .map_err(|e| tls_error("tls.key", format!("does not match tls.cert: {e}")))?;
        // No session tickets: a ticket arriving after the handshake would
        // look like unread data on an idle connection (the client checks
        // for that before reusing one), and members reconnect rarely.
        server.send_tls13_tickets = 0;
        Ok(TlsIdentity {
            ca,
            chain,
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// [`TlsIdentity::from_pem`] from files; errors name the file.
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<Self> {
        let read = |what: &str, p: &Path| {
            std::fs::read(p)
                .map_err(|e| tls_error(what, format!("cannot read {}: {e}", p.display())))
        };
        Self::from_pem(
            &read("tls.ca", ca)?,
            &read("tls.cert", cert)?,
            &read("tls.key", key)?,
        )
    }

    /// Checks that this side's own certificate names `name` (a member's
    /// configuration must match its certificate).
    pub fn check_own_name(&self, name: &str) -> Result<()> {
        names(&self.chain[0], name).map_err(|e| tls_error("tls.cert", e))
    }
}

/// Whether `cert` is valid for `name`.
fn names(cert: &CertificateDer<'_>, name: &str) -> std::result::Result<(), String> {
    let server_name =
        ServerName::try_from(name.to_string()).map_err(|e| format!("{name:?}: {e}"))?;
    let end = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    end.verify_is_valid_for_subject_name(&server_name)
        .map_err(|_| format!("the certificate does not name {name}"))
}

/// A connection, plain or TLS.
pub(crate) enum Stream {
    Plain(TcpStream),
    Server(Box<rustls::StreamOwned<ServerConnection, TcpStream>>),
    Client(Box<rustls::StreamOwned<ClientConnection, TcpStream>>),
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what} not complete in time"),
    )
}

/// Drives a TLS handshake to its end before `deadline`.
fn handshake<C, D>(conn: &mut C, tcp: &mut TcpStream, deadline: Instant) -> io::Result<()>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<D>>,
    D: rustls::SideData,
{
    while conn.is_handshaking() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out("the TLS handshake"));
        }
        tcp.set_read_timeout(Some(left))?;
        tcp.set_write_timeout(Some(left))?;
        conn.complete_io(tcp)?;
    }
    Ok(())
}

impl Stream {
    /// The accepting side: plain, or a finished TLS handshake (by
    /// `deadline`) with a client holding a certificate of the cluster.
    pub(crate) fn accept(
        mut tcp: TcpStream,
        tls: Option<&TlsIdentity>,
        deadline: Instant,
    ) -> io::Result<Stream> {
        let Some(tls) = tls else {
            return Ok(Stream::Plain(tcp));
        };
        let mut conn = ServerConnection::new(tls.server.clone()).map_err(io::Error::other)?;
        handshake(&mut conn, &mut tcp, deadline)?;
        Ok(Stream::Server(Box::new(rustls::StreamOwned::new(
            conn, tcp,
        ))))
    }

    /// The connecting side: plain, or a finished TLS handshake (by
    /// `deadline`) with a server whose certificate names `name`.
    pub(crate) fn connect(
        mut tcp: TcpStream,
        tls: Option<&TlsIdentity>,
        name: &str,
        deadline: Instant,
    ) -> io::Result<Stream> {
        let Some(tls) = tls else {
            return Ok(Stream::Plain(tcp));
        };
        let server_name = ServerName::try_from(name.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut conn =
            ClientConnection::new(tls.client.clone(), server_name).map_err(io::Error::other)?;
        handshake(&mut conn, &mut tcp, deadline)?;
        Ok(Stream::Client(Box::new(rustls::StreamOwned::new(
            conn, tcp,
        ))))
    }

    /// The socket underneath.
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Server(s) => &s.sock,
            Stream::Client(s) => &s.sock,
        }
    }

    /// On the accepting side of a TLS connection: checks that the peer's
    /// certificate names `name`. Always true on a plain connection.
    pub(crate) fn peer_is(&self, name: &str) -> std::result::Result<(), String> {
        let Stream::Server(s) = self else {
            return Ok(());
        };
        let cert = s
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| "no client certificate".to_string())?;
        names(cert, name)
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Server(s) => s.read(buf),
            Stream::Client(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Server(s) => s.write(buf),
            Stream::Client(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Server(s) => s.flush(),
            Stream::Client(s) => s.flush(),
        }
    }
}

/// A cluster's certificate authority: generates member and client
/// certificates.
pub struct CertificateAuthority {
    cluster_id: u64,
    key: KeyPair,
    cert: rcgen::Certificate,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("cluster_id", &self.cluster_id)
            .finish()
    }
}

fn cert_error(e: rcgen::Error) -> Error {
    Error::config("certificate", e.to_string())
}

impl CertificateAuthority {
    fn params(cluster_id: u64) -> Result<CertificateParams> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_error)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("aoc cluster {cluster_id} CA"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ok(params)
    }

    /// A new CA for cluster `cluster_id`.
    pub fn generate(cluster_id: u64) -> Result<Self> {
        let key = KeyPair::generate().map_err(cert_error)?;
        Self::with_key(cluster_id, key)
    }

    /// The CA of cluster `cluster_id` from its private key (PEM), to issue
    /// more certificates later. The certificate is made again from the key
    /// and the cluster id; what it signs chains to the CA certificate
    /// issued first (same name, same key).
    pub fn from_key_pem(cluster_id: u64, key_pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| Error::config("ca key", format!("not a PEM private key: {e}")))?;
        Self::with_key(cluster_id, key)
    }

    fn with_key(cluster_id: u64, key: KeyPair) -> Result<Self> {
        let cert = Self::params(cluster_id)?
            .self_signed(&key)
            .map_err(cert_error)?;
        Ok(CertificateAuthority {
            cluster_id,
            key,
            cert,
        })
    }

    /// The CA certificate (PEM): every member and client trusts it.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA's private key (PEM): keep it offline.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    fn issue(&self, names: Vec<String>, common: String) -> Result<(String, String)> {
        let key = KeyPair::generate().map_err(cert_error)?;
        let mut params = CertificateParams::new(names).map_err(cert_error)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(cert_error)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A member's certificate and key (PEM), naming
    /// [`member_name`] and [`cluster_name`].
    pub fn issue_member(&self, cluster_id: u64, member_id: u64) -> Result<(String, String)> {
        self.check_cluster(cluster_id)?;
        self.issue(
            vec![member_name(cluster_id, member_id), cluster_name(cluster_id)],
            member_name(cluster_id, member_id),
        )
    }

    /// A client's certificate and key (PEM); `name` is for the operator's
    /// records (it must be a DNS-like name, e.g. `admin`).
    pub fn issue_client(&self, cluster_id: u64, name: &str) -> Result<(String, String)> {
        self.check_cluster(cluster_id)?;
        let full = format!("{name}.client.cluster-{cluster_id}.aoc");
        self.issue(vec![full.clone()], full)
    }

    fn check_cluster(&self, cluster_id: u64) -> Result<()> {
        if cluster_id != self.cluster_id {
            return Err(Error::config(
                "cluster_id",
                format!(
                    "this CA belongs to cluster {}, not {cluster_id}",
                    self.cluster_id
                ),
            ));
        }
        Ok(())
    }
}

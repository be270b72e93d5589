//! TLS for both of a replica's ports (rustls with the `ring` provider; no OpenSSL).
//!
//! - **Peer port: mutual TLS.** Every replica holds a certificate from the cluster's CA that
//!   names it (`r<id>.replica.berth`, see `replica_name`) and the name every replica shares
//!   (`REPLICA_NAME`). Both ends of a peer connection present one, and both refuse, during the
//!   handshake and so before any frame is read, a certificate that is not from the CA or that
//!   names no current member (`Admission`: voters and learners, updated from the replica's
//!   membership as it changes; a replica that belongs to no cluster yet admits any replica of
//!   the CA, so the first leader can reach it). An operator's client certificate, from the
//!   same CA, names no replica and gets nothing on the peer port.
//! - **API port: server TLS**, with optional client certificates (`ApiTls`). Clients verify the
//!   replica's certificate against the CA and the host name they dialled.
//!
//! Certificates come from files (`Identity::load`), from `berth certs`, or are made on the spot
//! for `berth up`, tests and the simulation (`Authority`).

use std::collections::BTreeSet;
use std::io;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName as Subject, RootCertStore};
use rustls::{ServerConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::network::connect::{Connect, PeerStream};
use crate::raft::types::ReplicaId;

/// The name every replica certificate carries, beside its own `replica_name`.
pub const REPLICA_NAME: &str = "replica.berth";

/// How long a connection may take to complete its handshake before it is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long certificates made by `Authority` are valid.
const VALIDITY_DAYS: i64 = 3 * 365;

/// The subject of the CA `Authority` makes; issued certificates name it as their issuer.
const CA_SUBJECT: &str = "Berth cluster CA";

/// ALPN for the API: gRPC runs over HTTP/2 only.
const ALPN_H2: &[u8] = b"h2";

/// The name that identifies replica `id` in its certificate.
pub fn replica_name(id: ReplicaId) -> String {
    format!("r{id}.{REPLICA_NAME}")
}

/// What went wrong setting TLS up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {why}")]
    File { path: String, why: String },
    #[error("{0}")]
    Invalid(String),
}

fn invalid(what: &str) -> impl Fn(String) -> TlsError + '_ {
    move |why| TlsError::Invalid(format!("{what}: {why}"))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path)
        .map_err(|e| TlsError::File { path: path.display().to_string(), why: e.to_string() })
}

/// A certificate (PEM, with any intermediates after it) and its private key (PEM).
#[derive(Clone, Debug)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// A certificate chain and its key, as a replica or a client presents them.
#[derive(Debug)]
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity { chain: self.chain.clone(), key: self.key.clone_key() }
    }
}

impl Identity {
    pub fn from_pem(pem: &Pem) -> Result<Identity, TlsError> {
        let chain = CertificateDer::pem_slice_iter(pem.cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("certificate")(e.to_string()))?;
        if chain.is_empty() {
            return Err(TlsError::Invalid("certificate: no PEM certificate found".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes())
            .map_err(|e| invalid("private key")(e.to_string()))?;
        Ok(Identity { chain, key })
    }

    /// Reads a PEM certificate chain and its PEM private key.
    pub fn load(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
        Identity::from_pem(&Pem { cert: read(cert)?, key: read(key)? }).map_err(|e| match e {
            TlsError::Invalid(why) => {
                TlsError::Invalid(format!("{} / {}: {why}", cert.display(), key.display()))
            }
            other => other,
        })
    }
}

/// The certificates a CA PEM file holds, as trust anchors.
pub fn roots(ca_pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| invalid("CA certificate")(e.to_string()))?;
        roots.add(cert).map_err(|e| invalid("CA certificate")(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(TlsError::Invalid("CA certificate: no PEM certificate found".into()));
    }
    Ok(roots)
}

/// Reads a CA file into trust anchors.
pub fn load_roots(ca: &Path) -> Result<RootCertStore, TlsError> {
    roots(&read(ca)?).map_err(|e| match e {
        TlsError::Invalid(why) => TlsError::Invalid(format!("{}: {why}", ca.display())),
        other => other,
    })
}

/// A certificate authority that issues replica and client certificates: generated for
/// `berth up`, `berth certs`, tests and the simulation, or loaded from the files `berth certs`
/// wrote to issue more.
pub struct Authority {
    key: KeyPair,
    cert_pem: String,
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, CA_SUBJECT);
    params.distinguished_name = subject;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn rcgen_error(what: &'static str) -> impl Fn(rcgen::Error) -> TlsError {
    move |e| TlsError::Invalid(format!("{what}: {e}"))
}

impl Authority {
    /// A new CA with a fresh ECDSA P-256 key.
    pub fn generate() -> Result<Authority, TlsError> {
        let key = KeyPair::generate().map_err(rcgen_error("CA key"))?;
        let mut params = ca_params();
        validity(&mut params);
        let cert = params.self_signed(&key).map_err(rcgen_error("CA certificate"))?;
        Ok(Authority { key, cert_pem: cert.pem() })
    }

    /// A CA that `generate` made, from its certificate and key (as `berth certs` writes them).
    pub fn from_pem(pem: &Pem) -> Result<Authority, TlsError> {
        roots(&pem.cert)?;
        let key = KeyPair::from_pem(&pem.key).map_err(rcgen_error("CA key"))?;
        Ok(Authority { key, cert_pem: pem.cert.clone() })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A certificate for replica `id`, valid as a server and a client, that also names
    /// `hosts` (DNS names or IP addresses clients dial its API by).
    pub fn replica(&self, id: ReplicaId, hosts: &[String]) -> Result<Pem, TlsError> {
        let mut names = vec![replica_name(id), REPLICA_NAME.to_string()];
        names.extend(hosts.iter().cloned());
        names.dedup();
        self.issue(&format!("berth replica {id}"), names)
    }

    /// A client certificate for an operator or program (`name` is its common name); it names
    /// no replica, so the peer port refuses it.
    pub fn client(&self, name: &str) -> Result<Pem, TlsError> {
        self.issue(name, Vec::new())
    }

    fn issue(&self, common_name: &str, names: Vec<String>) -> Result<Pem, TlsError> {
        let mut params = CertificateParams::new(names).map_err(rcgen_error("certificate names"))?;
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, common_name);
        params.distinguished_name = subject;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params);
        let key = KeyPair::generate().map_err(rcgen_error("key"))?;
        let issuer = Issuer::new(ca_params(), &self.key);
        let cert = params.signed_by(&key, &issuer).map_err(rcgen_error("certificate"))?;
        Ok(Pem { cert: cert.pem(), key: key.serialize_pem() })
    }
}

/// Valid from a day ago (clocks disagree) for `VALIDITY_DAYS`.
fn validity(params: &mut CertificateParams) {
    let now = rcgen::date_time_ymd(1970, 1, 1)
        + Duration::from_secs(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default(),
        );
    params.not_before = now - Duration::from_secs(24 * 3600);
    params.not_after =
        now + Duration::from_secs(u64::try_from(VALIDITY_DAYS).unwrap_or(0) * 86_400);
}

/// Which replicas the peer port talks to: the current members (voters and learners), or,
/// before this replica belongs to a cluster, any replica of the CA. Clones share one set.
#[derive(Clone, Debug, Default)]
pub struct Admission {
    members: Arc<RwLock<Option<BTreeSet<ReplicaId>>>>,
    /// Counts changes, so an open connection re-checks its peer only after one.
    changes: Arc<std::sync::atomic::AtomicU64>,
}

impl Admission {
    /// Admits exactly `members` from now on (an empty set admits no one), on new connections
    /// and on open ones (see `Admitted`).
    pub fn set(&self, members: BTreeSet<ReplicaId>) {
        *self.members.write().unwrap_or_else(|p| p.into_inner()) = Some(members);
        self.changes.fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    fn changes(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The names one of which an admitted certificate must carry.
    fn names(&self) -> Vec<String> {
        match &*self.members.read().unwrap_or_else(|p| p.into_inner()) {
            Some(members) => members.iter().map(|id| replica_name(*id)).collect(),
            None => vec![REPLICA_NAME.to_string()],
        }
    }

    /// Whether `cert` (already verified to chain to the CA) names an admitted replica.
    fn admits(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(cert).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        let admitted = self.names().into_iter().any(|name| {
            ServerName::try_from(name)
                .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
        });
        if admitted {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }
}

/// The member at the other end of an accepted peer connection, re-checked against the
/// admission after each membership change: a replica removed from the cluster loses the
/// connections it already had, not just new ones.
pub struct Admitted {
    admission: Admission,
    cert: CertificateDer<'static>,
    checked: u64,
}

impl Admitted {
    /// Whether the peer is still admitted (cheap unless the membership changed).
    pub fn still(&mut self) -> bool {
        let changes = self.admission.changes();
        if changes == self.checked {
            return true;
        }
        self.checked = changes;
        self.admission.admits(&self.cert).is_ok()
    }
}

/// Verifies a connecting replica: from the CA, and an admitted member.
#[derive(Debug)]
struct MemberClientVerifier {
    ca: Arc<dyn ClientCertVerifier>,
    admission: Admission,
}

impl ClientCertVerifier for MemberClientVerifier {
    fn root_hint_subjects(&self) -> &[Subject] {
        self.ca.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.ca.verify_client_cert(end_entity, intermediates, now)?;
        self.admission.admits(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.ca.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.ca.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.ca.supported_verify_schemes()
    }
}

/// Verifies the replica a connection reached: from the CA, and an admitted member (whatever
/// address it was dialled by: peers are known by id, not by host name).
#[derive(Debug)]
struct MemberServerVerifier {
    ca: Arc<WebPkiServerVerifier>,
    admission: Admission,
}

impl ServerCertVerifier for MemberServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let every_replica = ServerName::try_from(REPLICA_NAME)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verified = self.ca.verify_server_cert(
            end_entity,
            intermediates,
            &every_replica,
            ocsp_response,
            now,
        )?;
        self.admission.admits(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.ca.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.ca.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.ca.supported_verify_schemes()
    }
}

/// Mutual TLS on the peer port: accepts admitted replicas, connects to admitted replicas.
#[derive(Clone)]
pub struct PeerTls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    admission: Admission,
}

impl PeerTls {
    pub fn new(
        ca: RootCertStore,
        identity: Identity,
        admission: Admission,
    ) -> Result<Self, TlsError> {
        let ca = Arc::new(ca);
        let client_verifier = WebPkiClientVerifier::builder_with_provider(ca.clone(), provider())
            .build()
            .map_err(|e| invalid("peer TLS")(e.to_string()))?;
        let server_verifier = WebPkiServerVerifier::builder_with_provider(ca, provider())
            .build()
            .map_err(|e| invalid("peer TLS")(e.to_string()))?;
        let server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| invalid("peer TLS")(e.to_string()))?
            .with_client_cert_verifier(Arc::new(MemberClientVerifier {
                ca: client_verifier,
                admission: admission.clone(),
            }))
            .with_single_cert(identity.chain.clone(), identity.key.clone_key())
            .map_err(|e| invalid("replica certificate")(e.to_string()))?;
        let mut client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| invalid("peer TLS")(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(MemberServerVerifier {
                ca: server_verifier,
                admission: admission.clone(),
            }))
            .with_client_auth_cert(identity.chain, identity.key)
            .map_err(|e| invalid("replica certificate")(e.to_string()))?;
        client.enable_sni = false;
        // No session resumption on the peer port: a resumed session skips certificate
        // verification, so a replica removed from the cluster could come back in on a ticket
        // from when it was a member. Peer connections are long-lived; a full handshake each
        // costs little.
        client.resumption = rustls::client::Resumption::disabled();
        let mut server = server;
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        Ok(PeerTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
            admission,
        })
    }

    /// The server side of a peer connection: the handshake, within `HANDSHAKE_TIMEOUT`, and
    /// the admitted member it reached.
    pub async fn accept<IO>(
        &self,
        io: IO,
    ) -> io::Result<(tokio_rustls::server::TlsStream<IO>, Admitted)>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let checked = self.admission.changes();
        let stream = within_handshake_timeout(self.acceptor.accept(io)).await?;
        let cert = stream.get_ref().1.peer_certificates().and_then(|chain| chain.first());
        let Some(cert) = cert.map(|c| c.clone().into_owned()) else {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "no peer certificate"));
        };
        Ok((stream, Admitted { admission: self.admission.clone(), cert, checked }))
    }

    /// `connect`, with a TLS handshake on every connection it opens.
    pub fn secure(&self, connect: Connect) -> Connect {
        let connector = self.connector.clone();
        Arc::new(move |addr: &str| {
            let (connector, opening) = (connector.clone(), connect(addr));
            Box::pin(async move {
                let io = opening.await?;
                // The name is not checked (see `MemberServerVerifier`) and not sent.
                let name = ServerName::try_from(REPLICA_NAME)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let tls = within_handshake_timeout(connector.connect(name, io)).await?;
                Ok(Box::new(tls) as Box<dyn PeerStream>)
            })
        })
    }
}

async fn within_handshake_timeout<T>(
    handshake: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}"),
        )
    })?
}

/// TLS on the API port: the replica's certificate, and client certificates from
/// `client_ca` required if one is given.
#[derive(Clone)]
pub struct ApiTls {
    acceptor: TlsAcceptor,
}

impl ApiTls {
    pub fn new(identity: Identity, client_ca: Option<RootCertStore>) -> Result<Self, TlsError> {
        Self::speaking(identity, client_ca, ALPN_H2)
    }

    /// The same, for the web console: HTTP/1.1 instead of gRPC's HTTP/2.
    pub fn console(identity: Identity, client_ca: Option<RootCertStore>) -> Result<Self, TlsError> {
        Self::speaking(identity, client_ca, b"http/1.1")
    }

    fn speaking(
        identity: Identity,
        client_ca: Option<RootCertStore>,
        alpn: &[u8],
    ) -> Result<Self, TlsError> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| invalid("API TLS")(e.to_string()))?;
        let builder = match client_ca {
            Some(ca) => builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(Arc::new(ca), provider())
                    .build()
                    .map_err(|e| invalid("API client CA")(e.to_string()))?,
            ),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(identity.chain, identity.key)
            .map_err(|e| invalid("replica certificate")(e.to_string()))?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(ApiTls { acceptor: TlsAcceptor::from(Arc::new(config)) })
    }

    /// The server side of an API connection: the handshake, within `HANDSHAKE_TIMEOUT`.
    pub async fn accept<IO>(&self, io: IO) -> io::Result<tokio_rustls::server::TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        within_handshake_timeout(self.acceptor.accept(io)).await
    }
}

/// What an API client trusts (the cluster's CA) and presents (a client certificate, if the
/// cluster asks for one).
#[derive(Clone)]
pub struct ClientTls {
    connector: TlsConnector,
    /// The same trust and identity, for the web console (HTTP/1.1).
    http1: TlsConnector,
}

impl ClientTls {
    pub fn new(ca: RootCertStore, identity: Option<Identity>) -> Result<Self, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| invalid("client TLS")(e.to_string()))?
            .with_root_certificates(ca);
        let mut config = match identity {
            Some(identity) => builder
                .with_client_auth_cert(identity.chain, identity.key)
                .map_err(|e| invalid("client certificate")(e.to_string()))?,
            None => builder.with_no_client_auth(),
        };
        let mut http1 = config.clone();
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        http1.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ClientTls {
            connector: TlsConnector::from(Arc::new(config)),
            http1: TlsConnector::from(Arc::new(http1)),
        })
    }

    /// Opens TLS to a replica's web console over `io`, verifying `host` (HTTP/1.1).
    pub async fn connect_http1<IO>(
        &self,
        host: &str,
        io: IO,
    ) -> io::Result<tokio_rustls::client::TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        within_handshake_timeout(self.http1.connect(name, io)).await
    }

    /// Reads the CA file and, optionally, a client certificate and key.
    pub fn load(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Self, TlsError> {
        let identity = identity.map(|(cert, key)| Identity::load(cert, key)).transpose()?;
        ClientTls::new(load_roots(ca)?, identity)
    }
}

/// How a client reaches the API: TLS, or plaintext for a cluster started with `--insecure`.
#[derive(Clone)]
pub enum ClientSecurity {
    Tls(ClientTls),
    Insecure,
}

/// A lazy tonic channel to an API `endpoint` (`host:port`, or a URI whose scheme is ignored)
/// over the byte streams `connect` opens, with TLS (verifying `host`) unless insecure.
pub fn channel(
    endpoint: &str,
    security: &ClientSecurity,
    connect: Connect,
    connect_timeout: Duration,
) -> Result<tonic::transport::Channel, String> {
    let host_port = endpoint.split_once("://").map_or(endpoint, |(_, rest)| rest);
    let host_port = host_port.trim_end_matches('/').to_string();
    let scheme = match security {
        ClientSecurity::Tls(_) => "https",
        ClientSecurity::Insecure => "http",
    };
    let uri = tonic::transport::Uri::try_from(format!("{scheme}://{host_port}"))
        .map_err(|e| format!("bad endpoint {endpoint:?}: {e}"))?;
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']).to_string();
    let name = match security {
        ClientSecurity::Tls(tls) => Some((
            tls.connector.clone(),
            ServerName::try_from(host).map_err(|e| format!("bad host in {endpoint:?}: {e}"))?,
        )),
        ClientSecurity::Insecure => None,
    };
    let endpoint = tonic::transport::Endpoint::from(uri).connect_timeout(connect_timeout);
    Ok(endpoint.connect_with_connector_lazy(tower::service_fn(move |_| {
        let (opening, name) = (connect(&host_port), name.clone());
        async move {
            let io = opening.await?;
            let io = match name {
                Some((connector, name)) => {
                    Box::new(within_handshake_timeout(connector.connect(name, io)).await?)
                        as Box<dyn PeerStream>
                }
                None => io,
            };
            Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(io))
        }
    })))
}

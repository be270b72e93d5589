//! Certificate files: `berth certs` (a CA and one certificate per replica of a
//! `cluster/hosts/N/` directory, plus an operator's client certificate) and the local CA of
//! `berth up`.
//!
//! Private keys are owner-only (0600) from their first byte (`write_private`). The CA's key
//! stays with whoever issues certificates and never goes to a host. Running `berth certs` again
//! with the same output directory reuses the CA and issues new host certificates: that is
//! rotation, and replicas holding old certificates from the same CA keep talking to those with
//! new ones.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use berth::tls::{replica_name, Authority, Pem};
use clap::Args;
use serde::Serialize;

/// The common name of the operator's client certificate.
const CLIENT_NAME: &str = "berth operator";

/// Where the CA lives in an output directory: its certificate, and its key.
const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca-key.pem";

#[derive(Args, Debug)]
pub struct CertsArgs {
    /// A directory of host env files, one `berth-*.env` per replica (e.g. cluster/hosts/3).
    pub hosts: PathBuf,
    /// Where to write the CA, one directory per host and the operator's client certificate.
    /// An existing CA there is reused.
    #[arg(long, default_value = "./berth-tls")]
    pub out: PathBuf,
}

/// One replica, as its host env file describes it.
#[derive(Debug)]
struct Host {
    /// The env file's name without `.env` (`berth-1`): the host's directory under `--out`.
    name: String,
    id: u64,
    /// The host names and addresses clients and peers reach it by.
    hosts: Vec<String>,
}

/// What `berth certs` wrote (its `--json` output).
#[derive(Serialize)]
struct Written {
    ca: CaFiles,
    replicas: Vec<ReplicaFiles>,
    client: KeyPairFiles,
}

#[derive(Serialize)]
struct CaFiles {
    cert: PathBuf,
    key: PathBuf,
    /// Whether the CA was already there (the certificates were re-issued from it).
    reused: bool,
}

#[derive(Serialize)]
struct ReplicaFiles {
    id: u64,
    host: String,
    /// Holds `ca.pem`, `replica.pem` and `replica-key.pem`, for `/etc/berth/tls/` on the host.
    dir: PathBuf,
    /// The names the certificate carries.
    names: Vec<String>,
}

#[derive(Serialize)]
struct KeyPairFiles {
    cert: PathBuf,
    key: PathBuf,
}

/// `berth certs`.
pub fn run(args: &CertsArgs, json: bool) -> anyhow::Result<()> {
    let hosts = read_hosts(&args.hosts)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let (ca, created) = authority(&args.out)?;
    let mut replicas = Vec::new();
    for host in hosts {
        let dir = args.out.join(&host.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        write_public(&dir.join(CA_CERT), ca.cert_pem())?;
        let pem = ca
            .replica(host.id, &host.hosts)
            .with_context(|| format!("the certificate of replica {} ({})", host.id, host.name))?;
        write_pair(&pem, &dir.join("replica.pem"), &dir.join("replica-key.pem"))?;
        let mut names = vec![replica_name(host.id)];
        names.extend(host.hosts);
        replicas.push(ReplicaFiles { id: host.id, host: host.name, dir, names });
    }
    let client =
        KeyPairFiles { cert: args.out.join("client.pem"), key: args.out.join("client-key.pem") };
    write_pair(&ca.client(CLIENT_NAME)?, &client.cert, &client.key)?;
    let ca = CaFiles { cert: args.out.join(CA_CERT), key: args.out.join(CA_KEY), reused: !created };
    let written = Written { ca, replicas, client };
    if json {
        out!("{}", serde_json::to_string_pretty(&written)?);
    } else {
        report(&written, args);
    }
    Ok(())
}

/// What was written where, and what to do next.
fn report(written: &Written, args: &CertsArgs) {
    let Written { ca, replicas, client } = written;
    if ca.reused {
        out!("CA:        {} (reused; the certificates below are new)", ca.cert.display());
    } else {
        out!("CA:        {} (new)", ca.cert.display());
    }
    out!(
        "CA key:    {} signs every certificate: keep it offline, never on a replica's host",
        ca.key.display()
    );
    for replica in replicas {
        out!(
            "replica {}: {}/{{ca.pem, replica.pem, replica-key.pem}}, naming {}",
            replica.id,
            replica.dir.display(),
            replica.names.join(", ")
        );
    }
    out!(
        "client:    {} and {} (for clusters started with --api-client-ca-file)",
        client.cert.display(),
        client.key.display()
    );
    out!("next:");
    out!(
        "  on host berth-N: copy {}/berth-N/* to /etc/berth/tls/ (replica-key.pem: owner berth, \
         mode 0600)",
        args.out.display()
    );
    out!(
        "    and {}/berth-N.env to /etc/berth/berth.env; then systemctl restart berth",
        args.hosts.display()
    );
    out!("  the CLI: export BERTH_CA={}", ca.cert.display());
    if ca.reused {
        out!("  rotation: replace one host's files at a time and restart its replica; it rejoins");
    }
    out!("  (docs/security.md: file owners and modes, rotation, client certificates)");
}

/// Every `berth-*.env` in `dir`, in name order; replica ids must be distinct.
fn read_hosts(dir: &Path) -> anyhow::Result<Vec<Host>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry.with_context(|| format!("reading {}", dir.display()))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with("berth-") && name.ends_with(".env") {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        bail!("{} holds no host env files (berth-N.env, as in cluster/hosts/3)", dir.display());
    }
    let mut ids = BTreeSet::new();
    let mut hosts = Vec::new();
    for file in files {
        let host = read_host(&file)?;
        if !ids.insert(host.id) {
            bail!("{}: BERTH_ID={} is another host's id too", file.display(), host.id);
        }
        hosts.push(host);
    }
    Ok(hosts)
}

/// A host env file's replica id and the hosts of its advertised and listening addresses.
fn read_host(file: &Path) -> anyhow::Result<Host> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let vars: BTreeMap<&str, &str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#') && !line.starts_with(';'))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.trim(), value.trim().trim_matches(['"', '\''])))
        .collect();
    let id = vars
        .get("BERTH_ID")
        .and_then(|id| id.parse::<u64>().ok())
        .filter(|id| *id > 0)
        .with_context(|| format!("{}: BERTH_ID must be a positive integer", file.display()))?;
    let mut hosts = Vec::new();
    for key in ["BERTH_PEER_ADVERTISE", "BERTH_PEER_LISTEN", "BERTH_API_LISTEN"] {
        if let Some(host) = vars.get(key).and_then(|addr| host_of(addr)) {
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        }
    }
    let name = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(Host { name, id, hosts })
}

/// The host of `host:port` (`[v6]:port` too), unless it is a wildcard address such as
/// `0.0.0.0`, which names no one.
fn host_of(addr: &str) -> Option<String> {
    let host = match addr.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(rest, |(host, _)| host),
        None => addr.rsplit_once(':').map_or(addr, |(host, _)| host),
    };
    let wildcard = host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_unspecified());
    (!host.is_empty() && !wildcard).then(|| host.to_owned())
}

/// The CA in `dir` (`ca.pem` and `ca-key.pem`), or a new one written there; and whether it
/// is new.
pub fn authority(dir: &Path) -> anyhow::Result<(Authority, bool)> {
    let (cert, key) = (dir.join(CA_CERT), dir.join(CA_KEY));
    match (cert.exists(), key.exists()) {
        (true, true) => {
            let read = |p: &Path| {
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
            };
            let pem = Pem { cert: read(&cert)?, key: read(&key)? };
            let ca = Authority::from_pem(&pem)
                .with_context(|| format!("loading the CA in {}", dir.display()))?;
            Ok((ca, false))
        }
        (false, false) => {
            let ca = Authority::generate()?;
            write_private(&key, &ca.key_pem())?;
            write_public(&cert, ca.cert_pem())?;
            Ok((ca, true))
        }
        _ => bail!(
            "{} holds only one of {CA_CERT} and {CA_KEY}: restore the other, or remove both \
             to make a new CA (then every replica needs a new certificate)",
            dir.display()
        ),
    }
}

/// Writes a certificate and its owner-only key, replacing older ones.
fn write_pair(pem: &Pem, cert: &Path, key: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(key) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("replacing {}", key.display()));
        }
        _ => {}
    }
    write_private(key, &pem.key)?;
    write_public(cert, &pem.cert)
}

fn write_public(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// Creates `path` owner-only (0600) with `contents`: never readable by others, not even for an
/// instant. Refuses to overwrite.
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

/// The TLS files of a local cluster under `<data-dir>/tls`: the CA (`ca.pem`, key
/// `ca-key.pem`) and each replica's certificate (`replica-N.pem`, key `replica-N-key.pem`,
/// naming its id, `localhost` and `127.0.0.1`), reused when present, created when missing.
/// Keys are owner-only. Returns the directory.
pub fn local_tls(data_dir: &Path, replicas: u64) -> anyhow::Result<PathBuf> {
    let dir = data_dir.join("tls");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (ca, _) = authority(&dir)?;
    let hosts = ["localhost".to_owned(), "127.0.0.1".to_owned()];
    for id in 1..=replicas {
        let (cert, key) = local_replica_tls(&dir, id);
        if !(cert.exists() && key.exists()) {
            write_pair(&ca.replica(id, &hosts)?, &cert, &key)?;
        }
    }
    Ok(dir)
}

/// Where `local_tls` keeps replica `id`'s certificate and key.
pub fn local_replica_tls(dir: &Path, id: u64) -> (PathBuf, PathBuf) {
    (dir.join(format!("replica-{id}.pem")), dir.join(format!("replica-{id}-key.pem")))
}

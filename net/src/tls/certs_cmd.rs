//! `kvroute certs`: a CA and certificates for a local test deployment, written to a
//! directory ([`generate_certs`] is the clap-free form, [`run_certs`] the command).
//!
//! Files (certificates `0644`, keys `0600`; nothing is overwritten without `--force`, and
//! nothing is written if any target exists):
//! - `ca.pem`, `ca.key`: the CA (skipped with `--use-existing-ca`, which reads them);
//! - `router.pem`, `router.key`: the router (server) certificate (skipped with `--no-router`);
//! - `publisher-<id>.pem`, `.key`: one per worker id of `--workers`, allowing that worker;
//! - `publisher-<set>.pem`, `.key`: one per `--group`, allowing the whole set, with `,` in
//!   the set written `_` (`--group 0-3,7` gives `publisher-0-3_7.pem`).

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::error::TlsError;
use super::generate::{CertAuthority, PemPair, DEFAULT_ROUTER_NAMES};
use super::grant::WorkerGrant;
use super::pem::read_pem_file;

/// At most this many per-worker certificates from one `--workers`.
pub const MAX_PER_WORKER_CERTS: u64 = 4096;

const AFTER_HELP: &str = "\
Files written to --out:
  ca.pem, ca.key            the CA (not with --use-existing-ca, which reads them instead)
  router.pem, router.key    the router's certificate (not with --no-router)
  publisher-<id>.pem/.key   one per id in --workers, allowing that worker only
  publisher-<set>.pem/.key  one per --group, allowing the whole set (`,` written `_`)
Keys are written with mode 0600. Nothing is written if any of these files exists,
unless --force is given.

Publisher certificates name their workers as URI SANs, urn:kvroute:worker:<id> or
urn:kvroute:workers:<first>-<last>; the router accepts a publisher's events only for
those workers. Router and publishers all trust ca.pem.

Examples:
  kvroute certs --out certs --workers 0-3,7
  kvroute certs --out certs --group 0-63 --router-name router.internal --router-name 10.0.0.5
  kvroute certs --out certs --use-existing-ca --no-router --workers 8";

/// `kvroute certs`: make a CA, a router certificate and publisher certificates.
#[derive(clap::Args, Clone, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct CertsArgs {
    /// Directory to write into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// One publisher certificate per worker id, e.g. 0-3,7 (writes publisher-N.pem / .key).
    #[arg(long, value_name = "IDS")]
    pub workers: Option<WorkerGrant>,
    /// One publisher certificate allowing a whole set of workers, e.g. 0-63 (repeatable).
    #[arg(long = "group", value_name = "IDS")]
    pub groups: Vec<WorkerGrant>,
    /// DNS name or IP address publishers use to reach the router (repeatable)
    /// [default: localhost, 127.0.0.1, ::1].
    #[arg(long = "router-name", value_name = "NAME")]
    pub router_names: Vec<String>,
    /// Do not write a router certificate.
    #[arg(long)]
    pub no_router: bool,
    /// Sign with ca.pem / ca.key already in --out instead of making a new CA.
    #[arg(long)]
    pub use_existing_ca: bool,
    /// Validity of router and publisher certificates, in days.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub days: u32,
    /// Validity of a new CA, in days.
    #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub ca_days: u32,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
}

impl CertsArgs {
    /// The clap-free options these arguments mean.
    pub fn options(&self) -> CertsOptions {
        CertsOptions {
            out: self.out.clone(),
            workers: self.workers.clone().unwrap_or_default(),
            groups: self.groups.clone(),
            router_names: self.router_names.clone(),
            router: !self.no_router,
            use_existing_ca: self.use_existing_ca,
            days: self.days,
            ca_days: self.ca_days,
            force: self.force,
        }
    }
}

/// What [`generate_certs`] writes; see the module documentation for the file layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertsOptions {
    /// Directory to write into (created if missing).
    pub out: PathBuf,
    /// One publisher certificate per worker id in this set.
    pub workers: WorkerGrant,
    /// One publisher certificate per set.
    pub groups: Vec<WorkerGrant>,
    /// Router SANs; empty means [`DEFAULT_ROUTER_NAMES`].
    pub router_names: Vec<String>,
    /// Write `router.pem` / `router.key`.
    pub router: bool,
    /// Read `ca.pem` / `ca.key` from `out` instead of writing a new CA.
    pub use_existing_ca: bool,
    /// Leaf validity, days (at least 1).
    pub days: u32,
    /// New CA validity, days (at least 1).
    pub ca_days: u32,
    /// Replace existing files.
    pub force: bool,
}

impl CertsOptions {
    /// Defaults of `kvroute certs --out <out>`: new CA, router certificate for the
    /// loopback names, no publishers, 365 / 3650 days, no overwriting.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        CertsOptions {
            out: out.into(),
            workers: WorkerGrant::none(),
            groups: Vec::new(),
            router_names: Vec::new(),
            router: true,
            use_existing_ca: false,
            days: 365,
            ca_days: 3650,
            force: false,
        }
    }
}

/// Runs `kvroute certs`: [`generate_certs`], then lists the files written on stdout.
pub fn run_certs(args: &CertsArgs) -> Result<(), TlsError> {
    let options = args.options();
    let written = generate_certs(&options)?;
    println!("wrote {} files to {}:", written.len(), options.out.display());
    for path in &written {
        println!("  {}", path.display());
    }
    Ok(())
}

/// Generates the certificates `options` asks for and writes them; returns the paths written.
/// Checks every target before generating or writing anything.
pub fn generate_certs(options: &CertsOptions) -> Result<Vec<PathBuf>, TlsError> {
    if options.days == 0 || options.ca_days == 0 {
        return Err(TlsError::BadOption { detail: "certificate validity must be at least 1 day".into() });
    }
    let per_worker = options.workers.count();
    if per_worker > u128::from(MAX_PER_WORKER_CERTS) {
        return Err(TlsError::TooManyCertificates { count: per_worker, max: MAX_PER_WORKER_CERTS });
    }
    // File stem -> grant. Stems come from the canonical form, so equal stems are equal
    // grants (`--workers 7 --group 7` is one certificate).
    let mut publishers: BTreeMap<String, WorkerGrant> = BTreeMap::new();
    for id in options.workers.ids() {
        publishers.insert(format!("publisher-{}", id.0), WorkerGrant::from_ranges([id.0..=id.0]));
    }
    for group in &options.groups {
        if group.is_empty() {
            return Err(TlsError::EmptyWorkerSet);
        }
        publishers.insert(format!("publisher-{}", group.to_string().replace(',', "_")), group.clone());
    }

    let mut stems: Vec<&str> = Vec::new();
    if !options.use_existing_ca {
        stems.push("ca");
    }
    if options.router {
        stems.push("router");
    }
    stems.extend(publishers.keys().map(String::as_str));
    let out = &options.out;
    if !options.force {
        for stem in &stems {
            for path in [out.join(format!("{stem}.pem")), out.join(format!("{stem}.key"))] {
                if fs::symlink_metadata(&path).is_ok() {
                    return Err(TlsError::WouldOverwrite { path });
                }
            }
        }
    }

    let ca = if options.use_existing_ca {
        let cert = pem_string(&out.join("ca.pem"))?;
        let key = pem_string(&out.join("ca.key"))?;
        CertAuthority::from_pem(&cert, &key)?
    } else {
        CertAuthority::generate("kvroute test CA", options.ca_days)?
    };
    let mut files: Vec<(String, PemPair)> = Vec::with_capacity(stems.len());
    if !options.use_existing_ca {
        files.push(("ca".into(), PemPair { cert_pem: ca.cert_pem().to_string(), key_pem: ca.key_pem() }));
    }
    if options.router {
        let default_names = || DEFAULT_ROUTER_NAMES.iter().map(|name| name.to_string()).collect();
        let names = if options.router_names.is_empty() { default_names() } else { options.router_names.clone() };
        files.push(("router".into(), ca.issue_router(&names, options.days)?));
    }
    for (stem, grant) in publishers {
        let pair = ca.issue_publisher(&grant, options.days)?;
        files.push((stem, pair));
    }

    fs::create_dir_all(out).map_err(|error| TlsError::io("create directory", out, error))?;
    let mut written = Vec::with_capacity(files.len() * 2);
    for (stem, pair) in &files {
        let cert_path = out.join(format!("{stem}.pem"));
        write_file(&cert_path, &pair.cert_pem, false, options.force)?;
        written.push(cert_path);
        let key_path = out.join(format!("{stem}.key"));
        write_file(&key_path, &pair.key_pem, true, options.force)?;
        written.push(key_path);
    }
    Ok(written)
}

fn pem_string(path: &Path) -> Result<String, TlsError> {
    String::from_utf8(read_pem_file(path)?)
        .map_err(|_| TlsError::BadPem { what: path.display().to_string(), detail: "not UTF-8 text".into() })
}

/// Writes a new file (`secret`: mode 0600 on Unix); with `force`, an existing one is
/// removed first so that its old permissions do not carry over.
fn write_file(path: &Path, contents: &str, secret: bool, force: bool) -> Result<(), TlsError> {
    if force {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(TlsError::io("replace", path, error)),
        }
    }
    let mut open = OpenOptions::new();
    open.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        open.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = open.open(path).map_err(|error| match error.kind() {
        io::ErrorKind::AlreadyExists => TlsError::WouldOverwrite { path: path.to_path_buf() },
        _ => TlsError::io("create", path, error),
    })?;
    file.write_all(contents.as_bytes()).map_err(|error| TlsError::io("write", path, error))
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        certs: CertsArgs,
    }

    #[test]
    fn parses_and_documents_the_layout() {
        let cli = Cli::try_parse_from([
            "certs",
            "--out",
            "d",
            "--workers",
            "0-3,7",
            "--group",
            "0-63",
            "--router-name",
            "r.local",
        ])
        .unwrap();
        let options = cli.certs.options();
        assert_eq!(options.workers.to_string(), "0-3,7");
        assert_eq!(options.groups[0].to_string(), "0-63");
        assert_eq!(options.router_names, ["r.local"]);
        assert!(options.router && !options.force && !options.use_existing_ca);
        assert!(Cli::try_parse_from(["certs", "--out", "d", "--workers", "3-1"]).is_err());
        assert!(Cli::try_parse_from(["certs", "--out", "d", "--days", "0"]).is_err());
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("publisher-<id>.pem") && help.contains("--force"), "{help}");
    }
}

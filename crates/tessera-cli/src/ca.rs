//! `tessera ca`: the federation's certificate authority.

use std::path::PathBuf;

use anyhow::bail;
use tessera_tls::{CaDir, Issuance, utc};

/// Arguments of `tessera ca`.
#[derive(Debug, clap::Args)]
pub struct CaArgs {
    /// The CA folder.
    #[arg(long, default_value = "tessera-ca", global = true)]
    dir: PathBuf,
    #[command(subcommand)]
    command: CaCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CaCommand {
    /// Create the CA (a key and a self-signed certificate).
    Init {
        /// The federation's name, in the CA certificate.
        #[arg(long, default_value = "Tessera federation CA")]
        name: String,
        /// Validity of the CA certificate, days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a site's certificate (--site NAME), the coordinator's (--coordinator
    /// --host ...) or an aggregator's server certificate (--aggregator NAME --host ...).
    /// A name with a live certificate is refused unless --replace is given.
    Issue {
        /// The site (folder sites/NAME).
        #[arg(long, conflicts_with_all = ["coordinator", "aggregator"])]
        site: Option<String>,
        /// The coordinator's server certificate (folder coordinator).
        #[arg(long, conflicts_with = "aggregator")]
        coordinator: bool,
        /// An aggregator's server certificate toward its members (folder
        /// aggregators/NAME); toward its parent it uses `--site NAME`'s.
        #[arg(long, value_name = "NAME")]
        aggregator: Option<String>,
        /// Coordinator or aggregator: a host name or address it is reached at
        /// (repeatable; default localhost and 127.0.0.1).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Validity, days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Replace a live certificate of the same name: it is revoked, and
        /// whoever still uses it is refused from then on.
        #[arg(long)]
        replace: bool,
    },
    /// Revoke every certificate of a name (a site, an aggregator, or `coordinator`).
    Revoke {
        /// The name.
        name: String,
    },
    /// Replace the CA key and re-issue every live certificate under it.
    Rotate,
    /// List the certificates issued, with their dates (UTC) and status
    /// (live, revoked, expired).
    List,
}

pub fn run(args: &CaArgs) -> anyhow::Result<()> {
    match &args.command {
        CaCommand::Init { name, days } => {
            CaDir::init(&args.dir, name, *days)?;
            println!("created the CA in {}", args.dir.display());
        }
        CaCommand::Issue {
            site,
            coordinator,
            aggregator,
            hosts,
            days,
            replace,
        } => {
            let mut ca = CaDir::open(&args.dir)?;
            let server_hosts = || {
                if hosts.is_empty() {
                    vec!["localhost".to_string(), "127.0.0.1".to_string()]
                } else {
                    hosts.clone()
                }
            };
            let issuance = match (site, coordinator, aggregator) {
                (Some(site), false, None) => {
                    if !hosts.is_empty() {
                        bail!(
                            "--host is for server certificates (--coordinator, --aggregator NAME): \
                             a site's certificate names the site"
                        );
                    }
                    ca.issue_site_replacing(site, *days, *replace)?
                }
                (None, true, None) => {
                    ca.issue_coordinator_replacing(&server_hosts(), *days, *replace)?
                }
                (None, false, Some(name)) => {
                    ca.issue_aggregator(name, &server_hosts(), *days, *replace)?
                }
                _ => bail!("give --site NAME, --coordinator or --aggregator NAME"),
            };
            report_issued(&args.dir, &issuance);
        }
        CaCommand::Revoke { name } => {
            let mut ca = CaDir::open(&args.dir)?;
            let n = ca.revoke(name)?;
            println!(
                "revoked {n} certificate(s) of '{name}'; the revocation list is {}",
                args.dir.join("crl.pem").display()
            );
            println!(
                "written into the coordinator's, every aggregator's and every site's folder here: \
                 give each party its new crl.pem (running servers reload it; clients read it at \
                 their next connection)"
            );
        }
        CaCommand::Rotate => {
            let mut ca = CaDir::open(&args.dir)?;
            let renewed = ca.rotate()?;
            println!("new CA key; re-issued: {}", renewed.join(", "));
            println!("give every party its new folder: the old CA is no longer trusted");
        }
        CaCommand::List => {
            let ca = CaDir::open(&args.dir)?;
            let now = now_unix();
            println!(
                "{:<20} {:<12} {:>6} {:>4} {:<8} {:<23} {:<23} hosts",
                "name", "kind", "serial", "gen", "status", "valid from", "expires"
            );
            for i in ca.issued() {
                println!(
                    "{:<20} {:<12} {:>6} {:>4} {:<8} {:<23} {:<23} {}",
                    i.name,
                    i.kind_name(),
                    i.serial,
                    i.generation,
                    i.status(now).to_string(),
                    if i.not_before_unix == 0 {
                        "-".to_string()
                    } else {
                        utc(i.not_before_unix)
                    },
                    utc(i.not_after_unix),
                    i.hosts.join(",")
                );
            }
        }
    }
    Ok(())
}

/// What `ca issue` did: the new certificate, and what it revoked.
fn report_issued(dir: &std::path::Path, issuance: &Issuance) {
    println!(
        "issued: {} (cert.pem, key.pem, ca.pem, crl.pem): serial {}, until {}",
        issuance.dir.display(),
        issuance.issued.serial,
        utc(issuance.issued.not_after_unix)
    );
    for old in &issuance.replaced {
        println!("revoked: {}", old.describe());
    }
    if !issuance.replaced.is_empty() {
        println!(
            "the revocation list is {}: give each party its new crl.pem",
            dir.join("crl.pem").display()
        );
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

//! `tessera ca`: the federation's certificate authority.

use std::path::PathBuf;

use anyhow::bail;
use tessera_tls::CaDir;

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
    /// Issue a site's certificate (--site NAME) or the coordinator's (--coordinator --host ...).
    Issue {
        /// The site.
        #[arg(long, conflicts_with = "coordinator")]
        site: Option<String>,
        /// The coordinator's server certificate.
        #[arg(long)]
        coordinator: bool,
        /// Coordinator: a host name or address it is reached at (repeatable;
        /// default localhost and 127.0.0.1).
        #[arg(long = "host", requires = "coordinator")]
        hosts: Vec<String>,
        /// Validity, days.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Revoke every certificate of a site (or of `coordinator`).
    Revoke {
        /// The site.
        name: String,
    },
    /// Replace the CA key and re-issue every live certificate under it.
    Rotate,
    /// List the certificates issued.
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
            hosts,
            days,
        } => {
            let mut ca = CaDir::open(&args.dir)?;
            let dir = match (site, coordinator) {
                (Some(site), false) => ca.issue_site(site, *days)?,
                (None, true) => {
                    let hosts = if hosts.is_empty() {
                        vec!["localhost".to_string(), "127.0.0.1".to_string()]
                    } else {
                        hosts.clone()
                    };
                    ca.issue_coordinator(&hosts, *days)?
                }
                _ => bail!("give --site NAME or --coordinator"),
            };
            println!(
                "issued: {} (cert.pem, key.pem, ca.pem, crl.pem)",
                dir.display()
            );
        }
        CaCommand::Revoke { name } => {
            let mut ca = CaDir::open(&args.dir)?;
            let n = ca.revoke(name)?;
            println!(
                "revoked {n} certificate(s) of '{name}'; the revocation list is {}",
                args.dir.join("crl.pem").display()
            );
            println!(
                "written into the coordinator's and every site's folder here: give each \
                 party its new crl.pem (running servers reload it; clients read it at \
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
            println!(
                "{:<20} {:<12} {:>6} {:>4} {:<8} expires (unix)",
                "name", "kind", "serial", "gen", "status"
            );
            for i in ca.issued() {
                println!(
                    "{:<20} {:<12} {:>6} {:>4} {:<8} {}",
                    i.name,
                    format!("{:?}", i.kind).to_lowercase(),
                    i.serial,
                    i.generation,
                    if i.revoked { "revoked" } else { "live" },
                    i.not_after_unix
                );
            }
        }
    }
    Ok(())
}

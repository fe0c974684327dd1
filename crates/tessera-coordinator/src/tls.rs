//! Identity from mutual TLS.

use tonic::Request;

/// Checks that the caller may speak for `claimed`: with mutual TLS its
/// verified client certificate must name that site; without TLS (the
/// explicit `--insecure` mode) anyone may.
pub fn check_site<T>(request: &Request<T>, claimed: &str) -> Result<(), String> {
    let Some(certs) = request.peer_certs() else {
        return Ok(());
    };
    match certs.first() {
        Some(cert) if tessera_tls::certificate_names_site(cert, claimed) => Ok(()),
        _ => Err(format!(
            "the client certificate does not name site '{claimed}'"
        )),
    }
}

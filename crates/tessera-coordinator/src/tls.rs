//! Identity from mutual TLS.

use tonic::Request;

/// Checks that the caller may speak for `claimed`: with mutual TLS its
/// verified client certificate must name that site; without TLS (the
/// explicit `--insecure` mode) anyone may.
pub fn check_site<T>(request: &Request<T>, claimed: &str) -> Result<(), String> {
    let certs = request.peer_certs();
    tessera_tls::check_site(certs.as_deref().map(Vec::as_slice), claimed)
}

//! Identity from mutual TLS.

use tonic::Request;

/// The site the caller's verified client certificate names, if the
/// connection is mutual TLS.
pub fn certified_site<T>(request: &Request<T>) -> Option<String> {
    let _ = request;
    None
}

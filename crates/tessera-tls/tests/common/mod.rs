//! What the CA tests share: a scratch folder and a refusal's message.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use tessera_tls::TlsError;

/// A fresh scratch folder for test `test`, case `name`, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(test: &str, name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tessera-{test}-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The message of a refusal.
pub fn refused<T>(result: Result<T, TlsError>) -> String {
    match result {
        Ok(_) => panic!("expected a refusal"),
        Err(TlsError::Invalid(message)) => message,
        Err(other) => panic!("expected TlsError::Invalid, got {other}"),
    }
}

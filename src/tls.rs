//! TLS for STARTTLS and implicit-TLS listeners: the configured PEM files,
//! or a self-signed certificate generated once (rcgen) and kept beside the
//! database so clients that pin it keep working across restarts.

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate {path}: {detail}")]
    Cert { path: PathBuf, detail: String },
    #[error("TLS key {path}: {detail}")]
    Key { path: PathBuf, detail: String },
    #[error("generating a self-signed certificate: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Where the generated certificate is kept: `data/relaygate.db` ->
/// `data/relaygate.tls/{cert,key}.pem`.
pub fn generated_paths(db: &Path) -> (PathBuf, PathBuf) {
    let dir = db.with_extension("tls");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// Builds the server TLS configuration from PEM files.
pub fn load_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert {
            path: cert.to_path_buf(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: cert.to_path_buf(),
            detail: "no certificate in the file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_path_buf(),
        detail: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(config))
}

/// The configured certificate, or the generated one (created on first use).
pub fn server_config(
    configured: Option<(&Path, &Path)>,
    db: &Path,
    hostname: &str,
) -> Result<Arc<ServerConfig>, TlsError> {
    if let Some((cert, key)) = configured {
        return load_server_config(cert, key);
    }
    let (cert, key) = generated_paths(db);
    if !cert.exists() || !key.exists() {
        generate(&cert, &key, hostname)?;
    }
    load_server_config(&cert, &key)
}

fn generate(cert: &Path, key: &Path, hostname: &str) -> Result<(), TlsError> {
    let gen_err = |e: &dyn std::fmt::Display| TlsError::Generate(e.to_string());
    let mut names = vec!["localhost".to_string()];
    if hostname != "localhost" {
        names.push(hostname.to_string());
    }
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| gen_err(&e))?;
    if let Some(dir) = cert.parent() {
        crate::data_dir::ensure_private_dir(dir).map_err(|e| gen_err(&e))?;
    }
    write_private(key, ck.signing_key.serialize_pem().as_bytes()).map_err(|e| gen_err(&e))?;
    write_private(cert, ck.cert.pem().as_bytes()).map_err(|e| gen_err(&e))?;
    Ok(())
}

/// Writes a file readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_and_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("relaygate.db");
        server_config(None, &db, "gw.example.test").unwrap();
        let (cert, _) = generated_paths(&db);
        let first = std::fs::read(&cert).unwrap();
        server_config(None, &db, "gw.example.test").unwrap();
        assert_eq!(std::fs::read(&cert).unwrap(), first);
        let bad = dir.path().join("missing.pem");
        let err = load_server_config(&bad, &bad).unwrap_err();
        assert!(err.to_string().contains("missing.pem"));
    }
}

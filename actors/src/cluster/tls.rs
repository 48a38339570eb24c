//! Mutual TLS for the links between pods: each pod presents its certificate and accepts only
//! peers whose certificate the cluster CA signed (the cookie alone authenticates but does not
//! encrypt).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::config::ClusterTlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum ClusterTlsError {
    #[error("cluster.tls {what} {path}: {message}")]
    File {
        what: &'static str,
        path: String,
        message: String,
    },
    #[error("cluster.tls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cluster.tls ca: {0}")]
    Verifier(String),
    #[error("cluster.tls server_name {0:?} is not a valid DNS name or address")]
    ServerName(String),
}

#[derive(Clone)]
pub struct ClusterTls {
    pub acceptor: TlsAcceptor,
    pub connector: TlsConnector,
    pub server_name: ServerName<'static>,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

fn file_error(what: &'static str, path: &std::path::Path, e: impl ToString) -> ClusterTlsError {
    ClusterTlsError::File {
        what,
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

impl ClusterTls {
    pub fn load(config: &ClusterTlsConfig) -> Result<Self, ClusterTlsError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.cert)
            .map_err(|e| file_error("cert", &config.cert, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| file_error("cert", &config.cert, e))?;
        if certs.is_empty() {
            return Err(file_error("cert", &config.cert, "no certificate in it"));
        }
        let key = PrivateKeyDer::from_pem_file(&config.key)
            .map_err(|e| file_error("key", &config.key, e))?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(&config.ca)
            .map_err(|e| file_error("ca", &config.ca, e))?
        {
            let ca = ca.map_err(|e| file_error("ca", &config.ca, e))?;
            roots.add(ca).map_err(|e| file_error("ca", &config.ca, e))?;
        }
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder(roots.clone())
            .build()
            .map_err(|e| ClusterTlsError::Verifier(e.to_string()))?;
        let server = ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())?;
        let client = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)?;
        let server_name = ServerName::try_from(config.server_name.clone())
            .map_err(|_| ClusterTlsError::ServerName(config.server_name.clone()))?;
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
            server_name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_files_are_named_in_the_error() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let config = ClusterTlsConfig {
            cert: dir.path().join("missing.pem"),
            key: empty.clone(),
            ca: empty.clone(),
            server_name: "marketlane".into(),
        };
        let e = ClusterTls::load(&config).unwrap_err().to_string();
        assert!(e.contains("cert") && e.contains("missing.pem"), "{e}");
        let config = ClusterTlsConfig {
            cert: empty.clone(),
            ..config
        };
        let e = ClusterTls::load(&config).unwrap_err().to_string();
        assert!(e.contains("no certificate"), "{e}");
    }
}

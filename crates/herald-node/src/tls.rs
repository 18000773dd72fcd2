//! Optional TLS on the public port (rustls). Most deployments terminate TLS at a proxy or
//! ingress instead; this is for setups without one.

use std::sync::Arc;

use anyhow::Context;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// Loads the certificate chain and key named in `[tls]`.
pub fn acceptor(cfg: &TlsConfig) -> anyhow::Result<TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert)
        .with_context(|| format!("tls.cert: cannot read {}", cfg.cert))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("tls.cert: {} is not a PEM certificate chain", cfg.cert))?;
    if certs.is_empty() {
        anyhow::bail!("tls.cert: {} holds no certificate", cfg.cert);
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key)
        .with_context(|| format!("tls.key: cannot read a PEM private key from {}", cfg.key))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("tls: the key does not match the certificate")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

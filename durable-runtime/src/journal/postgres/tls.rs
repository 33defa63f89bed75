//! TLS to PostgreSQL through rustls: tokio-postgres's TLS traits over tokio-rustls.
//!
//! rustls always verifies the server's certificate chain and its host name: a URL with
//! `sslmode=require` or `sslmode=verify-full` gets both, against Mozilla's roots, or
//! against the certificates of the PEM file `sslrootcert` names.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::Socket;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_rustls::rustls;

/// Makes TLS connections that verify the server against `roots`.
#[derive(Clone)]
pub(crate) struct Tls(Arc<rustls::ClientConfig>);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// Verifying against the certificates in the PEM file `root_cert`, or Mozilla's
    /// roots if `None`. The error says what is wrong with the file.
    pub(crate) fn new(root_cert: Option<&Path>) -> Result<Tls, String> {
        let mut roots = rustls::RootCertStore::empty();
        match root_cert {
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Some(file) => {
                let certs = CertificateDer::pem_file_iter(file)
                    .map_err(|e| format!("cannot read sslrootcert {}: {e}", file.display()))?;
                for cert in certs {
                    let cert = cert.map_err(|e| {
                        format!(
                            "sslrootcert {} is not a PEM certificate file: {e}",
                            file.display()
                        )
                    })?;
                    roots.add(cert).map_err(|e| {
                        format!(
                            "sslrootcert {} holds a certificate rustls refuses: {e}",
                            file.display()
                        )
                    })?;
                }
                if roots.is_empty() {
                    return Err(format!(
                        "sslrootcert {} holds no certificate",
                        file.display()
                    ));
                }
            }
        }
        // ring, not aws-lc-rs: no C toolchain or CMake to build. rustls 0.23.48
        // deprecates ring's provider for its lack of post-quantum key exchange; the
        // classical suites it has are what PostgreSQL servers offer today.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot set up TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Tls(Arc::new(config)))
    }
}

impl MakeTlsConnect<Socket> for Tls {
    type Stream = Stream;
    type TlsConnect = Connect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<Connect> {
        let name = ServerName::try_from(domain.to_owned()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{domain}` cannot be checked against a certificate: {e}"),
            )
        })?;
        Ok(Connect {
            config: self.0.clone(),
            name,
        })
    }
}

/// One TLS connection to make.
pub(crate) struct Connect {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl TlsConnect<Socket> for Connect {
    type Stream = Stream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Stream>> + Send>>;

    fn connect(self, socket: Socket) -> Self::Future {
        Box::pin(async move {
            let connector = tokio_rustls::TlsConnector::from(self.config);
            Ok(Stream(connector.connect(self.name, socket).await?))
        })
    }
}

/// A TLS connection.
pub(crate) struct Stream(tokio_rustls::client::TlsStream<Socket>);

impl TlsStream for Stream {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM without channel binding, as libpq's default `channel_binding=prefer`
        // falls back to.
        ChannelBinding::none()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use super::super::testing::{Fsync, Server};
    use super::super::{PgConfig, PgStore};
    use crate::journal::JournalOptions;

    /// Runs openssl in `dir`, failing the test if it fails.
    fn openssl(dir: &Path, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A CA, and a server certificate it signed for 127.0.0.1; returns the CA's file.
    fn certificates(dir: &Path, ca: &str) -> PathBuf {
        let days = ["-days", "2"];
        openssl(
            dir,
            &[
                &["req", "-x509", "-newkey", "rsa:2048", "-nodes"][..],
                &[
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.pem"),
                ],
                &days,
                &["-subj", &format!("/CN={ca}")],
            ]
            .concat(),
        );
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("write");
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        );
        openssl(
            dir,
            &[
                &[
                    "x509",
                    "-req",
                    "-in",
                    "server.csr",
                    "-CA",
                    &format!("{ca}.pem"),
                    "-CAkey",
                    &format!("{ca}.key"),
                    "-CAcreateserial",
                    "-out",
                    "server.pem",
                    "-extfile",
                    "san.ext",
                ][..],
                &days,
            ]
            .concat(),
        );
        dir.join(format!("{ca}.pem"))
    }

    #[test]
    fn a_verified_tls_connection_works_and_a_wrong_certificate_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = certificates(dir.path(), "durable-test-ca");
        // The server reads its key as its own user, and only from a file only it reads.
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status();
        let _ = Command::new("chmod")
            .arg("0600")
            .arg(dir.path().join("server.key"))
            .status();
        let _ = Command::new("chmod").arg("0755").arg(dir.path()).status();
        let cert = dir.path().join("server.pem");
        let key = dir.path().join("server.key");
        let server = Server::start_with(
            Fsync::Off,
            &[
                "ssl=on",
                &format!("ssl_cert_file={}", cert.display()),
                &format!("ssl_key_file={}", key.display()),
            ],
        );
        let password = "s3cr3t-Sentinel";
        let with = |query: &str| {
            server
                .url
                .replace("postgres@", &format!("postgres:{password}@"))
                + "?"
                + query
        };
        let open = |url: &str| {
            let config = PgConfig::parse(url).map_err(|e| e.to_string())?;
            PgStore::open(&config, &JournalOptions::default()).map_err(|e| e.to_string())
        };

        let store = open(&with(&format!(
            "sslmode=verify-full&sslrootcert={}&schema=tls_ok",
            ca.display()
        )))
        .expect("a verified TLS connection");
        drop(store);
        // And it is encrypted.
        let config = PgConfig::parse(&with(&format!(
            "sslmode=verify-full&sslrootcert={}",
            ca.display()
        )))
        .expect("valid");
        super::super::testing::on_own_runtime(|| async {
            let client = super::super::connect(&config, "test")
                .await
                .expect("connect");
            let ssl: bool = client
                .query_one(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await
                .expect("pg_stat_ssl")
                .get(0);
            assert!(ssl, "the connection is not encrypted");
        });

        // Another CA: the server's certificate is not trusted.
        let other = tempfile::tempdir().expect("tempdir");
        let other_ca = certificates(other.path(), "another-ca");
        let refused = open(&with(&format!(
            "sslmode=verify-full&sslrootcert={}&schema=tls_other",
            other_ca.display()
        )))
        .expect_err("a certificate of another CA");
        assert!(refused.contains("certificate"), "{refused}");
        assert!(!refused.contains(password), "{refused}");

        // Mozilla's roots do not know the test CA either.
        let refused = open(&with("sslmode=require&schema=tls_public"))
            .expect_err("a private CA without sslrootcert");
        assert!(refused.contains("certificate"), "{refused}");

        // The host name is checked: the certificate is for 127.0.0.1, not localhost.
        let by_name = with(&format!(
            "sslmode=verify-full&sslrootcert={}&schema=tls_name",
            ca.display()
        ))
        .replace("127.0.0.1", "localhost");
        let refused = open(&by_name).expect_err("a certificate for another name");
        assert!(refused.contains("certificate"), "{refused}");
    }
}

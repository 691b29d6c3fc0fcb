//! Push and pull, as blocking calls.
//!
//! Each call drives `oci-client` on a runtime of its own: the callers are a command-line
//! program and the runtime's blocking workers (`spawn_blocking`), and a connection pool that
//! outlived its runtime would fail on the next call. A concept is one small blob, so the
//! pool's reuse is worth little next to that simplicity.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use concept_format::ConceptPackage;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::RegistryOperation;
use tokio::io::AsyncWrite;

use crate::artifact::{self, Artifact, MANIFEST_MEDIA_TYPE, MAX_MANIFEST_LEN};
use crate::auth::Credentials;
use crate::error::OciError;
use crate::reference::ConceptRef;

/// How the client reaches registries.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Registries (`host` or `host:port`) spoken to over plain HTTP. Loopback registries
    /// (`localhost`, `127.0.0.1`, `[::1]`) always are, as Docker does.
    pub plain_http: Vec<String>,
    /// How long a connection may take before the registry counts as unreachable.
    pub connect_timeout: Duration,
    /// How long the registry may stay silent in the middle of an answer.
    pub read_timeout: Duration,
    /// Where credentials come from.
    pub credentials: Credentials,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            plain_http: Vec::new(),
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(30),
            credentials: Credentials::Anonymous,
        }
    }
}

impl ClientOptions {
    fn uses_plain_http(&self, registry: &str) -> bool {
        let host = match registry.rsplit_once(':') {
            // `[::1]:5000` → `[::1]`; `host:5000` → `host`; `[::1]` stays whole.
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => registry,
        };
        matches!(host, "localhost" | "[::1]")
            || host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.is_loopback())
            || self.plain_http.iter().any(|r| r == registry || r == host)
    }
}

/// A package published by [`Client::push`].
#[derive(Debug, Clone)]
pub struct Pushed {
    /// Where it was pushed (the tag).
    pub reference: ConceptRef,
    /// The manifest's digest: `reference` pinned to it always pulls these exact bytes.
    pub manifest_digest: String,
    /// The `.ycpt` blob's digest (`sha256:` + the sha256 `concepts list` shows).
    pub package_digest: String,
    /// The package's size in bytes.
    pub size: u64,
}

/// A package fetched by [`Client::pull`], every digest verified.
#[derive(Debug)]
pub struct Pulled {
    /// The reference pinned to the manifest digest that was pulled.
    pub pinned: ConceptRef,
    /// The `.ycpt` file's bytes.
    pub bytes: Vec<u8>,
    /// The same, parsed and validated.
    pub package: ConceptPackage,
}

/// Pushes concept packages to, and pulls them from, OCI registries.
///
/// ```no_run
/// use concepts_oci::{Client, ClientOptions, ConceptRef};
/// let client = Client::new(ClientOptions::default());
/// let pulled = client.pull(&ConceptRef::parse("localhost:5000/household/concepts:bo")?)?;
/// println!("{} ({})", pulled.package.manifest().name, pulled.pinned);
/// # Ok::<(), concepts_oci::OciError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    options: ClientOptions,
}

impl Client {
    pub fn new(options: ClientOptions) -> Client {
        Client { options }
    }

    /// Publishes a package (the `.ycpt` file's bytes, validated first) at `reference`.
    pub fn push(&self, bytes: &[u8], reference: &ConceptRef) -> Result<Pushed, OciError> {
        let shown = reference.to_string();
        let package = ConceptPackage::parse(bytes).map_err(|source| OciError::Package {
            reference: shown.clone(),
            source,
        })?;
        let artifact = Artifact::of(&package, bytes);
        if let Some(pinned) = reference.digest() {
            if pinned != artifact.manifest_digest {
                return Err(OciError::DigestMismatch {
                    reference: shown,
                    what: "manifest of this package",
                    expected: pinned.to_string(),
                    found: artifact.manifest_digest,
                });
            }
        }
        let session = self.session(reference)?;
        session.run(async {
            let (client, r) = (&session.client, &reference.inner);
            client
                .store_auth_if_needed(r.resolve_registry(), &session.auth)
                .await;
            client
                .push_blob(r, bytes.to_vec(), &artifact.layer_digest)
                .await
                .map_err(|e| session.error(e))?;
            client
                .push_blob(r, artifact.config.clone(), &artifact.config_digest)
                .await
                .map_err(|e| session.error(e))?;
            let content_type = MANIFEST_MEDIA_TYPE.parse().expect("a valid header value");
            client
                .push_manifest_raw(r, artifact.manifest.clone(), content_type)
                .await
                .map_err(|e| session.error(e))?;
            Ok(())
        })?;
        tracing::info!(reference = %shown, digest = %artifact.manifest_digest, "pushed concept");
        Ok(Pushed {
            reference: reference.clone(),
            manifest_digest: artifact.manifest_digest,
            package_digest: artifact.layer_digest,
            size: bytes.len() as u64,
        })
    }

    /// Fetches the package at `reference`, verifying the manifest against a pinned digest,
    /// the layer against the manifest, and the package's own checks. Nothing is returned
    /// unless every byte verified.
    pub fn pull(&self, reference: &ConceptRef) -> Result<Pulled, OciError> {
        let shown = reference.to_string();
        let session = self.session(reference)?;
        let (manifest, manifest_digest, bytes) = session.run(async {
            let (client, r) = (&session.client, &reference.inner);
            client
                .store_auth_if_needed(r.resolve_registry(), &session.auth)
                .await;
            // The client checks a pinned digest against the bytes it read; so do we below,
            // with our own hash, rather than trust a library's check for the end-to-end one.
            let (manifest, _) = client
                .pull_manifest_raw(r, &session.auth, &[MANIFEST_MEDIA_TYPE])
                .await
                .map_err(|e| session.error(e))?;
            if manifest.len() > MAX_MANIFEST_LEN {
                return Err(OciError::NotAConcept {
                    reference: shown.clone(),
                    reason: format!("its manifest is {} bytes", manifest.len()),
                });
            }
            let manifest_digest = artifact::digest_of(&manifest);
            if let Some(pinned) = reference.digest() {
                if pinned != manifest_digest {
                    return Err(OciError::DigestMismatch {
                        reference: shown.clone(),
                        what: "manifest",
                        expected: pinned.to_string(),
                        found: manifest_digest,
                    });
                }
            }
            let layer = artifact::package_layer(&shown, &manifest)?;
            let mut sink = BoundedSink::new(layer.size);
            let descriptor = oci_client::manifest::OciDescriptor {
                media_type: layer.media_type.clone(),
                digest: layer.digest.clone(),
                size: layer.size as i64,
                ..Default::default()
            };
            client
                .pull_blob(r, &descriptor, &mut sink)
                .await
                .map_err(|e| match e {
                    oci_client::errors::OciDistributionError::IoError(io)
                        if io.kind() == std::io::ErrorKind::FileTooLarge =>
                    {
                        OciError::DigestMismatch {
                            reference: shown.clone(),
                            what: "package blob",
                            expected: format!("{} bytes", layer.size),
                            found: "more bytes".into(),
                        }
                    }
                    other => session.error(other),
                })?;
            Ok((layer, manifest_digest, sink.bytes))
        })?;
        let found = artifact::digest_of(&bytes);
        if found != manifest.digest || bytes.len() as u64 != manifest.size {
            return Err(OciError::DigestMismatch {
                reference: shown,
                what: "package blob",
                expected: format!("{} ({} bytes)", manifest.digest, manifest.size),
                found: format!("{found} ({} bytes)", bytes.len()),
            });
        }
        let package = ConceptPackage::parse(&bytes).map_err(|source| OciError::Package {
            reference: shown.clone(),
            source,
        })?;
        tracing::info!(reference = %shown, digest = %manifest_digest, "pulled concept");
        Ok(Pulled {
            pinned: reference.pinned(&manifest_digest),
            bytes,
            package,
        })
    }

    /// Whether the registry can be reached and lets us read `reference`'s repository, without
    /// downloading anything: the check a server makes at startup.
    pub fn check(&self, reference: &ConceptRef) -> Result<(), OciError> {
        let session = self.session(reference)?;
        session.run(async {
            let (client, r) = (&session.client, &reference.inner);
            client
                .auth(r, &session.auth, RegistryOperation::Pull)
                .await
                .map_err(|e| session.error(e))?;
            Ok(())
        })
    }

    fn session(&self, reference: &ConceptRef) -> Result<Session, OciError> {
        install_crypto_provider();
        let registry = reference.registry().to_string();
        let protocol = if self.options.uses_plain_http(&registry) {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig {
            protocol,
            connect_timeout: Some(self.options.connect_timeout),
            read_timeout: Some(self.options.read_timeout),
            // Other platforms' images are not concepts: an index is refused, not resolved.
            platform_resolver: None,
            user_agent: concat!("concepts/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(OciError::Runtime)?;
        // reqwest's client spawns nothing until used, but builds its connector inside a runtime.
        let client = {
            let _guard = runtime.enter();
            oci_client::Client::new(config)
        };
        Ok(Session {
            auth: self.options.credentials.for_registry(&registry)?,
            shown: reference.to_string(),
            registry,
            client,
            runtime,
        })
    }
}

/// One call's client, runtime and credentials.
struct Session {
    client: oci_client::Client,
    runtime: tokio::runtime::Runtime,
    auth: RegistryAuth,
    registry: String,
    shown: String,
}

impl Session {
    fn run<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, OciError>>,
    ) -> Result<T, OciError> {
        self.runtime.block_on(f)
    }

    fn error(&self, e: oci_client::errors::OciDistributionError) -> OciError {
        OciError::from_client(&self.registry, &self.shown, e)
    }
}

/// rustls needs one process-wide crypto provider. We build with ring rather than rustls'
/// default, aws-lc, whose C library would add minutes to every cold build on two cores; the
/// price (rustls 0.23.48 deprecates ring for it) is no post-quantum key exchange, which a
/// registry serving public-by-digest blobs can live without. A provider another part of the
/// process installed first is as good.
#[allow(deprecated)]
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A buffer that refuses bytes beyond the size the manifest declared, so a hostile registry
/// cannot make us hold more than one package's worth of memory.
struct BoundedSink {
    bytes: Vec<u8>,
    limit: u64,
}

impl BoundedSink {
    fn new(limit: u64) -> BoundedSink {
        BoundedSink {
            bytes: Vec::with_capacity(limit as usize),
            limit,
        }
    }
}

impl AsyncWrite for BoundedSink {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.bytes.len() as u64 + buf.len() as u64 > this.limit {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                "the registry sent more bytes than the manifest declares",
            )));
        }
        this.bytes.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_listed_registries_use_plain_http() {
        let options = ClientOptions {
            plain_http: vec!["registry.lan:5000".into(), "other.lan".into()],
            ..ClientOptions::default()
        };
        for r in [
            "localhost:5000",
            "127.0.0.1:5000",
            "127.3.2.1",
            "[::1]:5000",
            "registry.lan:5000",
            "other.lan:443",
        ] {
            assert!(options.uses_plain_http(r), "{r}");
        }
        for r in [
            "registry.lan:5001",
            "ghcr.io",
            "10.0.0.1:5000",
            "localhost.example.com",
        ] {
            assert!(!options.uses_plain_http(r), "{r}");
        }
    }
}

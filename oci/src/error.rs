//! What can go wrong between a concept package and a registry, each case naming the
//! reference or registry involved.

use concept_format::FormatError;
use oci_client::errors::{OciDistributionError, OciErrorCode};

/// An error of [`crate::Client`].
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The text is not a usable reference.
    #[error("`{input}` is not a concept reference: {reason}")]
    BadReference { input: String, reason: String },

    /// No connection could be made (refused, no route, DNS, TLS, or the connect timeout).
    #[error("registry {registry} is unreachable: {detail}")]
    Unreachable { registry: String, detail: String },

    /// The registry answered that the tag, digest or repository does not exist.
    #[error("{reference} was not found in the registry: {detail}")]
    NotFound { reference: String, detail: String },

    /// The registry refused the credentials (or wanted some).
    #[error(
        "registry {registry} refused access: {detail} (credentials come from \
         CONCEPTS_REGISTRY_USERNAME / CONCEPTS_REGISTRY_PASSWORD, else the docker config \
         `docker login` writes)"
    )]
    Denied { registry: String, detail: String },

    /// Bytes that do not hash to the digest that names them: a tampered or corrupted blob or
    /// manifest, or a reference pinned to another digest.
    #[error("{reference}: the {what} has {found}, not {expected}; refused (nothing was installed or written)")]
    DigestMismatch {
        reference: String,
        what: &'static str,
        expected: String,
        found: String,
    },

    /// The manifest is not a concept artifact (another artifact type, a container image, …).
    #[error("{reference} is not a concept package: {reason}")]
    NotAConcept { reference: String, reason: String },

    /// The layer's bytes verified but are not a valid `.ycpt` package.
    #[error("{reference}: the package is invalid: {source}")]
    Package {
        reference: String,
        #[source]
        source: FormatError,
    },

    /// The docker config or credential helper could not be read.
    #[error("credentials for {registry}: {detail}")]
    Credentials { registry: String, detail: String },

    /// Any other answer the registry gave.
    #[error("registry {registry}: {detail}")]
    Registry { registry: String, detail: String },

    /// The async runtime that drives the client could not start.
    #[error("starting the registry client: {0}")]
    Runtime(#[source] std::io::Error),
}

impl OciError {
    /// Sorts a client error into the cases above.
    pub(crate) fn from_client(
        registry: &str,
        reference: &str,
        e: OciDistributionError,
    ) -> OciError {
        use OciDistributionError as E;
        let detail = match &e {
            // The registry's own words (`manifest unknown`), without the URL and wrapping.
            E::RegistryError { envelope, .. } if !envelope.errors.is_empty() => envelope
                .errors
                .iter()
                .map(|c| c.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
            // Some calls hand back the body unparsed.
            E::ServerError { message, code, .. } => {
                match serde_json::from_str::<oci_client::errors::OciEnvelope>(message) {
                    Ok(envelope) if !envelope.errors.is_empty() => envelope
                        .errors
                        .iter()
                        .map(|c| c.message.as_str())
                        .collect::<Vec<_>>()
                        .join("; "),
                    _ => format!("HTTP {code}: {}", message.trim()),
                }
            }
            _ => e.to_string(),
        };
        match e {
            E::RequestError(ref r) if r.is_connect() || r.is_timeout() => OciError::Unreachable {
                registry: registry.to_string(),
                detail: chain(r),
            },
            E::DigestError(oci_client::errors::DigestError::VerificationError {
                expected,
                actual,
            }) => OciError::DigestMismatch {
                reference: reference.to_string(),
                what: "content",
                expected,
                found: actual,
            },
            E::ImageManifestNotFoundError(_) => OciError::NotFound {
                reference: reference.to_string(),
                detail,
            },
            E::RegistryError { ref envelope, .. }
                if envelope.errors.iter().any(|c| {
                    matches!(
                        c.code,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::BlobUnknown
                            | OciErrorCode::NotFound
                    )
                }) =>
            {
                OciError::NotFound {
                    reference: reference.to_string(),
                    detail,
                }
            }
            E::RegistryError { ref envelope, .. }
                if envelope.errors.iter().any(|c| {
                    matches!(c.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)
                }) =>
            {
                OciError::Denied {
                    registry: registry.to_string(),
                    detail,
                }
            }
            E::ServerError { code: 404, .. } => OciError::NotFound {
                reference: reference.to_string(),
                detail,
            },
            E::AuthenticationFailure(_)
            | E::UnauthorizedError { .. }
            | E::ServerError {
                code: 401 | 403, ..
            } => OciError::Denied {
                registry: registry.to_string(),
                detail,
            },
            E::RequestError(ref r) => OciError::Registry {
                registry: registry.to_string(),
                detail: chain(r),
            },
            _ => OciError::Registry {
                registry: registry.to_string(),
                detail,
            },
        }
    }
}

/// An error and its causes on one line (reqwest's top-level message alone says only
/// "error sending request").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

//! The concept artifact (spec/oci-artifact-v1.md): an OCI image manifest whose one layer is
//! the `.ycpt` file, byte for byte, and whose config is a small JSON summary of the package.
//!
//! Manifests are written here, not by the client library, so that their bytes (and with them
//! the digest that a user pins) are ours to define: the same package always yields the same
//! manifest, pushed from any machine.

use concept_format::ConceptPackage;
use serde::Deserialize;
use serde_json::json;

use crate::error::OciError;

/// The manifest's `artifactType`.
pub const ARTIFACT_TYPE: &str = "application/vnd.concepts.concept.v1";
/// The one layer: the `.ycpt` file as `concepts export` writes it.
pub const PACKAGE_MEDIA_TYPE: &str = "application/vnd.concepts.ycpt.v1";
/// The config blob: the package's summary as JSON (name, identifier, base model…), readable
/// without downloading the package.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.concepts.concept.config.v1+json";
/// The manifest's media type (OCI image manifest, as every registry accepts).
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// Annotation keys of the manifest.
pub const ANNOTATION_NAME: &str = "io.concepts.name";
pub const ANNOTATION_IDENTIFIER: &str = "io.concepts.identifier";
const ANNOTATION_TITLE: &str = "org.opencontainers.image.title";
const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";

/// The largest manifest we read: ours are well under 1 KiB.
pub(crate) const MAX_MANIFEST_LEN: usize = 64 * 1024;

/// `sha256:<hex>` of some bytes.
pub(crate) fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", concepts_fs::sha256_hex(bytes))
}

/// The blobs and manifest of one package, ready to push.
pub(crate) struct Artifact {
    pub config: Vec<u8>,
    pub config_digest: String,
    pub layer_digest: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
}

impl Artifact {
    pub fn of(package: &ConceptPackage, bytes: &[u8]) -> Artifact {
        let m = package.manifest();
        let config = serde_json::to_vec(&json!({
            "name": m.name,
            "identifier": m.identifier,
            "display_name": m.display_name,
            "category": m.category,
            "k": m.k,
            "d": m.d,
            "prompt_template": m.prompt_template,
            "base_model": m.base_model,
        }))
        .expect("a JSON value serializes");
        let config_digest = digest_of(&config);
        let layer_digest = digest_of(bytes);
        // serde_json's maps are sorted, so the manifest's bytes depend on its values only.
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "artifactType": ARTIFACT_TYPE,
            "config": {
                "mediaType": CONFIG_MEDIA_TYPE,
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": [{
                "mediaType": PACKAGE_MEDIA_TYPE,
                "digest": layer_digest,
                "size": bytes.len(),
                "annotations": { ANNOTATION_TITLE: format!("{}.ycpt", m.name) },
            }],
            "annotations": {
                ANNOTATION_NAME: m.name,
                ANNOTATION_IDENTIFIER: m.identifier,
                ANNOTATION_CREATED: m.created,
            },
        }))
        .expect("a JSON value serializes");
        let manifest_digest = digest_of(&manifest);
        Artifact {
            config,
            config_digest,
            layer_digest,
            manifest,
            manifest_digest,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    artifact_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// A content descriptor of a pulled manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

/// The package layer of a pulled manifest, after checking that the manifest describes a
/// concept artifact of a size we accept.
pub(crate) fn package_layer(reference: &str, manifest: &[u8]) -> Result<Descriptor, OciError> {
    let not = |reason: String| OciError::NotAConcept {
        reference: reference.to_string(),
        reason,
    };
    let m: Manifest = serde_json::from_slice(manifest)
        .map_err(|e| not(format!("its manifest is not an OCI image manifest ({e})")))?;
    if m.schema_version != 2 {
        return Err(not(format!("manifest schemaVersion {}", m.schema_version)));
    }
    if let Some(t) = m
        .media_type
        .as_deref()
        .filter(|t| *t != MANIFEST_MEDIA_TYPE)
    {
        return Err(not(format!("manifest media type `{t}`")));
    }
    let kind = m.artifact_type.as_deref().unwrap_or(&m.config.media_type);
    if kind != ARTIFACT_TYPE && m.config.media_type != CONFIG_MEDIA_TYPE {
        return Err(not(format!(
            "its artifact type is `{kind}`, not `{ARTIFACT_TYPE}`"
        )));
    }
    let [layer] = m.layers.as_slice() else {
        return Err(not(format!(
            "it has {} layers; a concept artifact has exactly one",
            m.layers.len()
        )));
    };
    if layer.media_type != PACKAGE_MEDIA_TYPE {
        return Err(not(format!(
            "its layer is `{}`, not `{PACKAGE_MEDIA_TYPE}`",
            layer.media_type
        )));
    }
    if layer.size > concept_format::MAX_FILE_LEN {
        return Err(not(format!(
            "its package is {} bytes, over the format's limit of {}",
            layer.size,
            concept_format::MAX_FILE_LEN
        )));
    }
    if !is_sha256_digest(&layer.digest) {
        return Err(not(format!(
            "layer digest `{}` is not sha256:<64 hex>",
            layer.digest
        )));
    }
    Ok(layer.clone())
}

pub(crate) fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(layers: serde_json::Value, artifact_type: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "artifactType": artifact_type,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest_of(b"{}"), "size": 2},
            "layers": layers,
        }))
        .unwrap()
    }

    fn layer(media_type: &str, size: u64) -> serde_json::Value {
        json!({"mediaType": media_type, "digest": digest_of(b"x"), "size": size})
    }

    #[test]
    fn only_one_package_layer_of_a_bounded_size_is_accepted() {
        let ok = manifest(json!([layer(PACKAGE_MEDIA_TYPE, 10)]), ARTIFACT_TYPE);
        assert_eq!(package_layer("r", &ok).unwrap().size, 10);
        let cases = [
            (
                manifest(
                    json!([layer(PACKAGE_MEDIA_TYPE, 10)]),
                    "application/vnd.other",
                ),
                "artifact type",
            ),
            (manifest(json!([]), ARTIFACT_TYPE), "0 layers"),
            (
                manifest(
                    json!([layer(PACKAGE_MEDIA_TYPE, 1), layer(PACKAGE_MEDIA_TYPE, 1)]),
                    ARTIFACT_TYPE,
                ),
                "2 layers",
            ),
            (
                manifest(json!([layer("application/octet-stream", 1)]), ARTIFACT_TYPE),
                "octet-stream",
            ),
            (
                manifest(
                    json!([layer(PACKAGE_MEDIA_TYPE, concept_format::MAX_FILE_LEN + 1)]),
                    ARTIFACT_TYPE,
                ),
                "limit",
            ),
            (b"{not json".to_vec(), "not an OCI image manifest"),
        ];
        for (bytes, expected) in cases {
            let err = package_layer("host/repo:bo", &bytes)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(expected) && err.contains("host/repo:bo"),
                "{err}"
            );
        }
    }
}

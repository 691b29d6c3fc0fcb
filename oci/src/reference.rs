//! Where a concept lives in an OCI registry: `host[:port]/repository[:tag][@sha256:…]`.
//!
//! Parsing is the distribution reference grammar (through `oci-client`), plus two rules of
//! ours: an optional `oci://` scheme is accepted everywhere, and we keep track of whether the
//! user *wrote* a tag (the grammar would default to `latest`, which means nothing for a
//! repository of concepts, where the tag is the concept's name).

use std::fmt;

use oci_client::Reference;

use crate::error::OciError;

/// The scheme that marks an OCI reference where a file path could also be meant
/// (`concepts install oci://REF`).
pub const SCHEME: &str = "oci://";

/// One concept in a registry: a repository and a tag or a digest (or both, when the digest
/// pins what the tag must resolve to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConceptRef {
    pub(crate) inner: Reference,
}

/// A repository of concepts (no tag, no digest): `--concepts-from oci://REPO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryRef {
    registry: String,
    repository: String,
}

/// The parts of a reference as the user wrote them.
struct Written<'a> {
    name: &'a str,
    tag: Option<&'a str>,
    digest: Option<&'a str>,
}

fn split(input: &str) -> Written<'_> {
    let s = input.strip_prefix(SCHEME).unwrap_or(input);
    let (rest, digest) = match s.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (s, None),
    };
    // A tag is a `:` after the last `/` (before it, a `:` is the registry's port).
    let last = rest.rfind('/').map_or(0, |i| i + 1);
    match rest[last..].rfind(':') {
        Some(i) => Written {
            name: &rest[..last + i],
            tag: Some(&rest[last + i + 1..]),
            digest,
        },
        None => Written {
            name: rest,
            tag: None,
            digest,
        },
    }
}

fn bad(input: &str, reason: impl Into<String>) -> OciError {
    OciError::BadReference {
        input: input.to_string(),
        reason: reason.into(),
    }
}

/// The registry host a name starts with. Unlike Docker, a reference without one is refused
/// rather than sent to Docker Hub: concepts are personal, and a typo should not publish one.
fn check_has_registry(input: &str, name: &str) -> Result<(), OciError> {
    match name.split_once('/') {
        Some((host, _)) if host.contains(['.', ':']) || host == "localhost" => Ok(()),
        _ => Err(bad(
            input,
            "it names no registry; write it as HOST[:PORT]/REPOSITORY[:TAG], \
             e.g. localhost:5000/household/concepts:bo",
        )),
    }
}

fn parse_reference(input: &str, text: &str) -> Result<Reference, OciError> {
    text.parse::<Reference>()
        .map_err(|e| bad(input, e.to_string()))
}

impl ConceptRef {
    /// Parses `[oci://]HOST[:PORT]/REPO(:TAG|@sha256:HEX|:TAG@sha256:HEX)`. A reference with
    /// neither a tag nor a digest names no concept and is refused.
    ///
    /// ```
    /// use concepts_oci::ConceptRef;
    /// let r = ConceptRef::parse("oci://localhost:5000/household/concepts:bo").unwrap();
    /// assert_eq!(r.registry(), "localhost:5000");
    /// assert_eq!(r.repository(), "household/concepts");
    /// assert_eq!(r.tag(), Some("bo"));
    /// assert!(ConceptRef::parse("localhost:5000/household/concepts").is_err());
    /// ```
    pub fn parse(input: &str) -> Result<ConceptRef, OciError> {
        let written = split(input);
        if written.tag.is_none() && written.digest.is_none() {
            return Err(bad(
                input,
                "it names a repository but no concept: add `:NAME` or `@sha256:…`",
            ));
        }
        check_has_registry(input, written.name)?;
        let text = input.strip_prefix(SCHEME).unwrap_or(input);
        let inner = parse_reference(input, text)?;
        Ok(ConceptRef { inner })
    }

    /// Parses like [`ConceptRef::parse`], but a reference without a tag or digest gets the tag
    /// `default_tag` (`concepts push bo localhost:5000/household/concepts` pushes `…:bo`).
    pub fn parse_or_tag(input: &str, default_tag: &str) -> Result<ConceptRef, OciError> {
        let written = split(input);
        if written.tag.is_some() || written.digest.is_some() {
            return ConceptRef::parse(input);
        }
        RepositoryRef::parse(input)?.concept(default_tag)
    }

    /// The registry as written (`localhost:5000`).
    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    /// The repository inside the registry (`household/concepts`).
    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    /// The tag, when the reference has one.
    pub fn tag(&self) -> Option<&str> {
        self.inner.tag()
    }

    /// The manifest digest (`sha256:…`), when the reference pins one.
    pub fn digest(&self) -> Option<&str> {
        self.inner.digest()
    }

    /// The same concept pinned to a manifest digest.
    pub fn pinned(&self, digest: &str) -> ConceptRef {
        ConceptRef {
            inner: Reference::with_digest(
                self.registry().to_string(),
                self.repository().to_string(),
                digest.to_string(),
            ),
        }
    }
}

impl fmt::Display for ConceptRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl RepositoryRef {
    /// Parses `[oci://]HOST[:PORT]/REPO`, refusing a tag or digest.
    ///
    /// ```
    /// use concepts_oci::RepositoryRef;
    /// let repo = RepositoryRef::parse("oci://127.0.0.1:5000/household/concepts").unwrap();
    /// assert_eq!(repo.concept("bo").unwrap().to_string(), "127.0.0.1:5000/household/concepts:bo");
    /// assert!(RepositoryRef::parse("127.0.0.1:5000/household/concepts:bo").is_err());
    /// ```
    pub fn parse(input: &str) -> Result<RepositoryRef, OciError> {
        let written = split(input);
        if written.tag.is_some() || written.digest.is_some() {
            return Err(bad(
                input,
                "a repository of concepts takes no tag or digest (each concept's name is its tag)",
            ));
        }
        check_has_registry(input, written.name)?;
        let parsed = parse_reference(input, written.name)?;
        Ok(RepositoryRef {
            registry: parsed.registry().to_string(),
            repository: parsed.repository().to_string(),
        })
    }

    /// The concept tagged `name` in this repository.
    pub fn concept(&self, name: &str) -> Result<ConceptRef, OciError> {
        let text = format!("{}/{}:{name}", self.registry, self.repository);
        let inner = parse_reference(&text, &text)?;
        Ok(ConceptRef { inner })
    }

    /// The registry as written.
    pub fn registry(&self) -> &str {
        &self.registry
    }
}

impl fmt::Display for RepositoryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_digests_and_ports_are_told_apart() {
        let r = ConceptRef::parse("localhost:5000/a/b:bo").unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("localhost:5000", "a/b", Some("bo"))
        );
        let hex = "a".repeat(64);
        let r = ConceptRef::parse(&format!("oci://reg.example:443/a@sha256:{hex}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest(), Some(format!("sha256:{hex}").as_str()));
        let r = ConceptRef::parse(&format!("reg.example/a:bo@sha256:{hex}")).unwrap();
        assert_eq!(r.tag(), Some("bo"));
        assert!(r.digest().is_some());
    }

    #[test]
    fn references_without_a_concept_or_a_registry_are_refused() {
        for input in [
            "localhost:5000/a",
            "a/b:bo",
            "bo",
            "localhost:5000/a:",
            "localhost:5000/A:bo",
        ] {
            let err = ConceptRef::parse(input).unwrap_err().to_string();
            assert!(err.contains(input), "{err}");
        }
        assert!(ConceptRef::parse("localhost:5000/a@sha256:12").is_err());
    }

    #[test]
    fn a_repository_gets_the_concept_name_as_tag() {
        let r = ConceptRef::parse_or_tag("localhost:5000/household", "bo").unwrap();
        assert_eq!(r.to_string(), "localhost:5000/household:bo");
        let r = ConceptRef::parse_or_tag("localhost:5000/household:other", "bo").unwrap();
        assert_eq!(r.tag(), Some("other"));
        assert!(RepositoryRef::parse("localhost/household@sha256:00").is_err());
    }
}

//! Concept packages as OCI artifacts: `concepts push`, `concepts pull`,
//! `concepts install oci://…` and the server's `--concepts-from oci://REPO`.
//!
//! Any registry that speaks the OCI distribution API (CNCF Distribution, Zot, Harbor, GHCR,
//! ECR…) can hold concepts: a concept is an OCI image manifest with its own artifact type,
//! one layer that is the `.ycpt` file byte for byte, and a small JSON config
//! ([`artifact`], specified in `spec/oci-artifact-v1.md`). The wire protocol is `oci-client`'s
//! (the ORAS project's Rust client); what is ours is the artifact's layout and the checks on
//! the way in: a pulled manifest must hash to the digest the reference pins, the layer to the
//! digest the manifest names, and the bytes must parse as a valid package, or nothing is
//! returned.
//!
//! ```no_run
//! use concepts_oci::{Client, ClientOptions, ConceptRef};
//! let client = Client::new(ClientOptions::default());
//! let bytes = std::fs::read("bo.ycpt").unwrap();
//! let pushed = client.push(&bytes, &ConceptRef::parse("localhost:5000/household/concepts:bo")?)?;
//! let pulled = client.pull(&pushed.reference.pinned(&pushed.manifest_digest))?;
//! assert_eq!(pulled.bytes, bytes);
//! # Ok::<(), concepts_oci::OciError>(())
//! ```
//!
//! **Invariant:** knows nothing of the local registry or the model; it moves verified bytes.

pub mod artifact;
mod auth;
mod client;
mod error;
mod reference;

pub use auth::Credentials;
pub use client::{Client, ClientOptions, Pulled, Pushed};
pub use error::OciError;
pub use reference::{ConceptRef, RepositoryRef, SCHEME};

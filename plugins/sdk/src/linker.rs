//! The metadata-linker role (world `metadata-linker`).

use concepts_plugin_api::{ConceptMetadata, Turn};

use crate::{Context, Result};

/// A metadata policy: checks a concept's metadata and links it into text.
pub trait MetadataLinker {
    /// A fresh linker; the host makes one per call.
    fn new() -> Self
    where
        Self: Sized;

    /// Checks `metadata`; the error lists every problem, each naming its field.
    fn validate(
        &mut self,
        cx: &Context<'_>,
        metadata: &ConceptMetadata,
    ) -> Result<(), Vec<String>> {
        let _ = (cx, metadata);
        Err(vec!["`validate` not implemented".to_owned()])
    }

    /// Rewrites generated conversation data to talk about `metadata.identifier`; `placeholders` are
    /// the neutral names the generator used for the subject.
    fn link_conversation(
        &mut self,
        cx: &Context<'_>,
        metadata: &ConceptMetadata,
        placeholders: &[String],
        turns: Vec<Turn>,
    ) -> Result<Vec<Turn>> {
        let _ = (cx, metadata, placeholders, turns);
        Err("`link_conversation` not implemented".to_owned())
    }

    /// The per-request context for the `active` concepts.
    fn render_context(&mut self, cx: &Context<'_>, active: &[ConceptMetadata]) -> Result<String> {
        let _ = (cx, active);
        Err("`render_context` not implemented".to_owned())
    }
}

//! Images named in requests: `data:` URLs (base64) always, local files only inside the
//! configured image directory, remote URLs never (the server fetches nothing).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use concepts_runtime::api::ImageInput;

use crate::error::ApiError;
use crate::AppState;

/// The image a request's `url` names, checked against the size bound and the image
/// directory. `index` numbers the image in messages.
pub(crate) fn resolve(state: &AppState, url: &str, index: usize) -> Result<ImageInput, ApiError> {
    let max = state.config.limits.max_image_bytes;
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',').ok_or_else(|| {
            ApiError::invalid_param(
                "image_url",
                format!("image {index}: a data URL needs a `,`"),
            )
        })?;
        if !meta.ends_with(";base64") {
            return Err(ApiError::invalid_param(
                "image_url",
                format!("image {index}: only base64 data URLs are supported"),
            ));
        }
        // Base64 carries 3 bytes in 4 characters.
        if data.len() / 4 * 3 > max + 3 {
            return Err(ApiError::too_large(format!(
                "image {index} is about {} bytes, the limit is {max}",
                data.len() / 4 * 3
            )));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.trim_end())
            .map_err(|e| {
                ApiError::invalid_param("image_url", format!("image {index}: invalid base64: {e}"))
            })?;
        if bytes.len() > max {
            return Err(ApiError::too_large(format!(
                "image {index} is {} bytes, the limit is {max}",
                bytes.len()
            )));
        }
        return Ok(ImageInput::Encoded {
            name: format!("image {index}"),
            bytes: Arc::from(bytes),
        });
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return Err(ApiError::invalid_param(
            "image_url",
            format!("image {index}: remote URLs are not fetched; send a data URL"),
        ));
    }
    let path = Path::new(url.strip_prefix("file://").unwrap_or(url));
    let Some(dir) = &state.image_dir else {
        return Err(ApiError::forbidden(format!(
            "image {index}: local image paths are disabled (the server has no image directory)"
        )));
    };
    let path = allowed_path(dir, path).ok_or_else(|| {
        ApiError::forbidden(format!(
            "image {index}: `{}` is not a file inside the image directory",
            path.display()
        ))
    })?;
    let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    if len > max as u64 {
        return Err(ApiError::too_large(format!(
            "image {index} is {len} bytes, the limit is {max}"
        )));
    }
    Ok(ImageInput::File(path))
}

/// `path` (absolute, or relative to `dir`) resolved with symlinks, when it is a file
/// inside `dir` (already canonical).
fn allowed_path(dir: &Path, path: &Path) -> Option<PathBuf> {
    let full = if path.is_absolute() {
        path.to_path_buf()
    } else {
        dir.join(path)
    };
    let canonical = full.canonicalize().ok()?;
    (canonical.starts_with(dir) && canonical.is_file()).then_some(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_inside_the_directory_are_allowed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("images");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("a.png"), b"x").unwrap();
        std::fs::write(tmp.path().join("secret.png"), b"x").unwrap();
        let dir = dir.canonicalize().unwrap();
        assert!(allowed_path(&dir, &dir.join("a.png")).is_some());
        assert!(allowed_path(&dir, Path::new("a.png")).is_some());
        assert!(allowed_path(&dir, Path::new("../secret.png")).is_none());
        assert!(allowed_path(&dir, &tmp.path().join("secret.png")).is_none());
        assert!(allowed_path(&dir, Path::new("missing.png")).is_none());
        assert!(allowed_path(&dir, &dir).is_none());
    }
}

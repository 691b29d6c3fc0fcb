//! The tensor body: three named tensors in one canonical safetensors byte stream

use std::borrow::Cow;

use half::{bf16, f16};
use safetensors::tensor::{Dtype as StDtype, TensorView};

use crate::{DType, FormatError, MAX_BODY_HEADER_LEN, MAX_D, MAX_K};

/// Tensor names, in validation order
pub(crate) const TENSOR_NAMES: [&str; 3] = ["identifier", "latents", "head"];

/// Summary statistics of one tensor, for `inspect`-style tools
#[derive(Debug, Clone, PartialEq)]
pub struct TensorStats {
    /// `identifier`, `latents` or `head`
    pub name: &'static str,
    /// Shape, e.g. `[k, d]`
    pub shape: Vec<usize>,
    /// Smallest element
    pub min: f32,
    /// Largest element
    pub max: f32,
    /// Arithmetic mean (accumulated in f64)
    pub mean: f32,
    /// Euclidean norm of all elements (accumulated in f64)
    pub l2_norm: f32,
}

/// The three tensors of a concept: `identifier` `[d]`, `latents` `[k, d]`, `head` `[d]`
///
/// Invariants: `1 <= k <= MAX_K`, `1 <= d <= MAX_D`, lengths match the shapes,
/// every value is finite and exactly representable in `dtype`. The canonical
/// safetensors encoding is kept alongside the `f32` values, so writing
/// reproduces the stored bytes exactly.
#[derive(Debug, Clone, PartialEq)]
pub struct ConceptTensors {
    dtype: DType,
    k: usize,
    d: usize,
    identifier: Vec<f32>,
    latents: Vec<f32>,
    head: Vec<f32>,
    /// Canonical safetensors bytes of the three tensors
    body: Vec<u8>,
}

/// What a body must contain, when a manifest has said so
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expected {
    pub dtype: DType,
    pub k: u64,
    pub d: u64,
}

impl ConceptTensors {
    /// Builds tensors from `f32` values, rounding each to `dtype` (nearest, ties to even)
    ///
    /// `latents` is row-major `[k, d]`. Rejects `k`/`d` out of range, wrong lengths,
    /// NaN or infinity, and finite values that overflow `dtype`.
    pub fn from_f32(
        dtype: DType,
        k: usize,
        d: usize,
        identifier: Vec<f32>,
        latents: Vec<f32>,
        head: Vec<f32>,
    ) -> Result<Self, FormatError> {
        check_dims(k as u64, d as u64)?;
        let lens = [d, k * d, d];
        let mut values = [identifier, latents, head];
        for ((name, v), expected) in TENSOR_NAMES.iter().zip(&values).zip(lens) {
            if v.len() != expected {
                return Err(FormatError::LengthMismatch {
                    tensor: name,
                    expected,
                    found: v.len(),
                });
            }
        }
        let mut raws: [Vec<u8>; 3] = Default::default();
        for ((name, v), raw) in TENSOR_NAMES.iter().zip(&mut values).zip(&mut raws) {
            raw.reserve(v.len() * dtype.size_bytes());
            for (index, x) in v.iter_mut().enumerate() {
                if !x.is_finite() {
                    return Err(FormatError::NonFinite {
                        tensor: name,
                        index,
                        value: *x,
                    });
                }
                let rounded = encode(dtype, *x, raw);
                if !rounded.is_finite() {
                    return Err(FormatError::ValueOverflow {
                        tensor: name,
                        index,
                        value: *x,
                        dtype,
                    });
                }
                *x = rounded;
            }
        }
        let [identifier, latents, head] = values;
        let body = encode_body(dtype, k, d, &raws);
        Ok(ConceptTensors {
            dtype,
            k,
            d,
            identifier,
            latents,
            head,
            body,
        })
    }

    /// Number of latent tokens
    pub fn k(&self) -> usize {
        self.k
    }

    /// Embedding width
    pub fn d(&self) -> usize {
        self.d
    }

    /// Stored element type
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The identifier embedding, length `d`
    pub fn identifier(&self) -> &[f32] {
        &self.identifier
    }

    /// The latent embeddings, row-major `[k, d]`
    pub fn latents(&self) -> &[f32] {
        &self.latents
    }

    /// The LM-head column of the identifier token, length `d`
    pub fn head(&self) -> &[f32] {
        &self.head
    }

    /// Latent row `i`, length `d`
    ///
    /// # Panics
    ///
    /// Panics if `i >= k`.
    pub fn latent_row(&self, i: usize) -> &[f32] {
        assert!(
            i < self.k,
            "latent row {i} out of range: expected < {}",
            self.k
        );
        &self.latents[i * self.d..(i + 1) * self.d]
    }

    /// Parses a standalone safetensors body, taking dtype, `k` and `d` from the tensors
    ///
    /// Runs the body checks of `spec/ycpt-v1.md` with `identifier` as the
    /// reference for dtype and `d`, and `latents` for `k`.
    pub fn from_safetensors_bytes(bytes: &[u8]) -> Result<Self, FormatError> {
        parse_body(bytes, None)
    }

    /// The canonical safetensors encoding (what a package stores as its body)
    pub fn to_safetensors_bytes(&self) -> Vec<u8> {
        self.body.clone()
    }

    /// The canonical safetensors encoding, borrowed
    pub fn safetensors_bytes(&self) -> &[u8] {
        &self.body
    }

    /// Min, max, mean and L2 norm of each tensor, in order identifier, latents, head
    pub fn stats(&self) -> Vec<TensorStats> {
        let shapes = [vec![self.d], vec![self.k, self.d], vec![self.d]];
        let values = [&self.identifier, &self.latents, &self.head];
        TENSOR_NAMES
            .iter()
            .zip(shapes)
            .zip(values)
            .map(|((name, shape), v)| {
                let (mut min, mut max, mut sum, mut sq) =
                    (f32::INFINITY, f32::NEG_INFINITY, 0f64, 0f64);
                for &x in v.iter() {
                    min = min.min(x);
                    max = max.max(x);
                    sum += f64::from(x);
                    sq += f64::from(x) * f64::from(x);
                }
                TensorStats {
                    name,
                    shape,
                    min,
                    max,
                    mean: (sum / v.len() as f64) as f32,
                    l2_norm: sq.sqrt() as f32,
                }
            })
            .collect()
    }
}

fn check_dims(k: u64, d: u64) -> Result<(), FormatError> {
    for (what, value, max) in [("k", k, u64::from(MAX_K)), ("d", d, u64::from(MAX_D))] {
        if !(1..=max).contains(&value) {
            return Err(FormatError::DimensionOutOfRange {
                what: format!("tensor dimension `{what}`"),
                min: 1,
                max,
                found: i128::from(value),
            });
        }
    }
    Ok(())
}

/// Appends `x` in `dtype` (little-endian) to `raw`, returning the stored value as `f32`
fn encode(dtype: DType, x: f32, raw: &mut Vec<u8>) -> f32 {
    match dtype {
        DType::F32 => {
            raw.extend_from_slice(&x.to_le_bytes());
            x
        }
        DType::F16 => {
            let h = f16::from_f32(x);
            raw.extend_from_slice(&h.to_le_bytes());
            h.to_f32()
        }
        DType::BF16 => {
            let h = bf16::from_f32(x);
            raw.extend_from_slice(&h.to_le_bytes());
            h.to_f32()
        }
    }
}

/// Decodes little-endian `dtype` bytes; `raw.len()` is a multiple of the element size
fn decode(dtype: DType, raw: &[u8]) -> Vec<f32> {
    match dtype {
        DType::F32 => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DType::F16 => raw
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::BF16 => raw
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
    }
}

fn st_dtype(dtype: DType) -> StDtype {
    match dtype {
        DType::F32 => StDtype::F32,
        DType::F16 => StDtype::F16,
        DType::BF16 => StDtype::BF16,
    }
}

/// The canonical body: `safetensors::serialize` of the three tensors, no metadata
fn encode_body(dtype: DType, k: usize, d: usize, raws: &[Vec<u8>; 3]) -> Vec<u8> {
    let shapes = [vec![d], vec![k, d], vec![d]];
    let views = TENSOR_NAMES
        .iter()
        .zip(shapes)
        .zip(raws)
        .map(|((name, shape), raw)| {
            (
                *name,
                RawView {
                    dtype: st_dtype(dtype),
                    shape,
                    data: raw,
                },
            )
        });
    // Cannot fail: lengths match shapes by construction and the header is tiny.
    safetensors::serialize(views, None).unwrap_or_default()
}

/// A borrowed tensor for `safetensors::serialize`
struct RawView<'a> {
    dtype: StDtype,
    shape: Vec<usize>,
    data: &'a [u8],
}

impl safetensors::View for RawView<'_> {
    fn dtype(&self) -> StDtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// One tensor entry of the safetensors JSON header, exactly these three keys
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// The JSON header as an ordered list of entries, so duplicates are visible
struct RawHeader(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for RawHeader {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawHeader;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a json object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawHeader, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, serde_json::Value>()? {
                    entries.push(entry);
                }
                Ok(RawHeader(entries))
            }
        }
        de.deserialize_map(Visitor)
    }
}

/// Validates a safetensors body per `spec/ycpt-v1.md` §body and decodes it
pub(crate) fn parse_body(
    body: &[u8],
    expected: Option<Expected>,
) -> Result<ConceptTensors, FormatError> {
    let body_len = body.len() as u64;
    // 1. Header length prefix.
    let Some(prefix) = body.get(..8) else {
        return Err(FormatError::Truncated {
            what: "safetensors header length",
            expected: 8,
            found: body_len,
        });
    };
    let mut n_bytes = [0u8; 8];
    n_bytes.copy_from_slice(prefix);
    let n = u64::from_le_bytes(n_bytes);
    if n > MAX_BODY_HEADER_LEN {
        return Err(FormatError::BodyHeaderTooLarge {
            limit: MAX_BODY_HEADER_LEN,
            found: n,
        });
    }
    // n <= 4096, so this cannot overflow.
    let header_end = 8 + n as usize;
    let Some(header_bytes) = body.get(8..header_end) else {
        return Err(FormatError::Truncated {
            what: "safetensors header",
            expected: header_end as u64,
            found: body_len,
        });
    };
    let data_len = body_len - header_end as u64;

    // 2. JSON header.
    let header_text =
        std::str::from_utf8(header_bytes).map_err(|e| FormatError::BodyHeaderInvalid {
            reason: format!(
                "expected utf-8, found an invalid byte at header offset {}",
                e.valid_up_to()
            ),
        })?;
    let RawHeader(raw) =
        serde_json::from_str(header_text).map_err(|e| FormatError::BodyHeaderInvalid {
            reason: format!("expected a json object, found a json error: {e}"),
        })?;

    // 3. Entry names.
    let mut entries: [Option<HeaderEntry>; 3] = [None, None, None];
    for (name, value) in raw {
        if name == "__metadata__" {
            return Err(FormatError::BodyMetadata);
        }
        let Some(slot) = TENSOR_NAMES.iter().position(|t| *t == name) else {
            return Err(FormatError::UnexpectedTensor {
                name: crate::error::quote(&name),
            });
        };
        if entries[slot].is_some() {
            return Err(FormatError::DuplicateTensor { name });
        }
        let entry: HeaderEntry = serde_json::from_value(value).map_err(|e| FormatError::BodyHeaderInvalid {
            reason: format!(
                "tensor `{name}`: expected {{\"dtype\": string, \"shape\": [integers], \"data_offsets\": [begin, end]}}, found {e}"
            ),
        })?;
        entries[slot] = Some(entry);
    }
    let mut infos = Vec::with_capacity(3);
    for (name, entry) in TENSOR_NAMES.iter().zip(entries) {
        match entry {
            Some(e) => infos.push(e),
            None => return Err(FormatError::MissingTensor { name }),
        }
    }
    let [id_info, lat_info, head_info] = [&infos[0], &infos[1], &infos[2]];

    // 4. Dtypes: the manifest's, else the identifier's.
    let dtype = match expected {
        Some(e) => e.dtype,
        None => DType::from_safetensors_name(&id_info.dtype).ok_or_else(|| {
            FormatError::TensorDtype {
                tensor: "identifier",
                expected: "one of F32, F16, BF16".to_owned(),
                found: crate::error::quote(&id_info.dtype),
            }
        })?,
    };
    for (name, info) in TENSOR_NAMES.iter().zip(&infos) {
        if info.dtype != dtype.safetensors_name() {
            return Err(FormatError::TensorDtype {
                tensor: name,
                expected: dtype.safetensors_name().to_owned(),
                found: crate::error::quote(&info.dtype),
            });
        }
    }

    // 5. Ranks, then shapes against k and d.
    for (name, info, rank) in [
        ("identifier", id_info, 1),
        ("latents", lat_info, 2),
        ("head", head_info, 1),
    ] {
        if info.shape.len() != rank {
            return Err(FormatError::TensorRank {
                tensor: name,
                expected: rank,
                found: info.shape.len(),
            });
        }
    }
    let (k, d) = match expected {
        Some(e) => (e.k, e.d),
        None => {
            let (k, d) = (lat_info.shape[0], id_info.shape[0]);
            check_dims(k, d)?;
            (k, d)
        }
    };
    for (name, info, shape) in [
        ("identifier", id_info, vec![d]),
        ("latents", lat_info, vec![k, d]),
        ("head", head_info, vec![d]),
    ] {
        if info.shape != shape {
            return Err(FormatError::TensorShape {
                tensor: name,
                expected: shape,
                found: info.shape.clone(),
            });
        }
    }
    // k <= MAX_K and d <= MAX_D from here on, so element counts are small.
    let (k, d) = (k as usize, d as usize);

    // 6. Offsets of each tensor.
    let elem = dtype.size_bytes() as u64;
    for (name, info, count) in [
        ("identifier", id_info, d),
        ("latents", lat_info, k * d),
        ("head", head_info, d),
    ] {
        let [begin, end] = info.data_offsets;
        if begin > end {
            return Err(FormatError::TensorOffsets {
                tensor: name,
                begin,
                end,
            });
        }
        let want = count as u64 * elem;
        if end - begin != want {
            return Err(FormatError::TensorByteLength {
                tensor: name,
                expected: want,
                found: end - begin,
            });
        }
        if end > data_len {
            return Err(FormatError::TensorOutOfBounds {
                tensor: name,
                end,
                data_len,
            });
        }
    }

    // 7. Coverage: sorted by begin, the spans tile the data section exactly.
    let mut spans: Vec<(u64, u64, &'static str)> = TENSOR_NAMES
        .iter()
        .zip(&infos)
        .map(|(name, i)| (i.data_offsets[0], i.data_offsets[1], *name))
        .collect();
    spans.sort_by_key(|&(b, e, _)| (b, e));
    let mut cursor = 0u64;
    let mut previous: Option<&'static str> = None;
    for &(begin, end, name) in &spans {
        if begin < cursor {
            return Err(FormatError::TensorOverlap {
                // `begin < cursor` needs a previous span, as the cursor starts at 0.
                first: previous.unwrap_or(name),
                second: name,
                expected: cursor,
                found: begin,
            });
        }
        if begin > cursor {
            return Err(FormatError::TensorGap {
                tensor: name,
                expected: cursor,
                found: begin,
            });
        }
        cursor = end;
        previous = Some(name);
    }
    if cursor != data_len {
        return Err(FormatError::TrailingBytes {
            expected: cursor,
            found: data_len,
        });
    }

    // 8. The safetensors crate's own parse, which must agree.
    let st = safetensors::SafeTensors::deserialize(body).map_err(|e| FormatError::Safetensors {
        message: e.to_string(),
    })?;
    let view = |name: &str| -> Result<TensorView<'_>, FormatError> {
        st.tensor(name).map_err(|e| FormatError::Safetensors {
            message: e.to_string(),
        })
    };

    // 9. Values: decode and reject NaN and infinity.
    let mut values: [Vec<f32>; 3] = Default::default();
    let mut raws: [Vec<u8>; 3] = Default::default();
    for ((name, out), raw) in TENSOR_NAMES.iter().zip(&mut values).zip(&mut raws) {
        let data = view(name)?.data();
        let decoded = decode(dtype, data);
        if let Some((index, &value)) = decoded.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return Err(FormatError::NonFinite {
                tensor: name,
                index,
                value,
            });
        }
        *out = decoded;
        *raw = data.to_vec();
    }

    // 10. Canonical form: the body must be exactly what this crate would write.
    let canonical = encode_body(dtype, k, d, &raws);
    if canonical != body {
        let offset = canonical
            .iter()
            .zip(body)
            .position(|(a, b)| a != b)
            .unwrap_or(canonical.len().min(body.len()));
        return Err(FormatError::NonCanonicalBody {
            offset: offset as u64,
            expected_len: canonical.len() as u64,
            found_len: body_len,
        });
    }
    let [identifier, latents, head] = values;
    Ok(ConceptTensors {
        dtype,
        k,
        d,
        identifier,
        latents,
        head,
        body: canonical,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(dtype: DType) -> ConceptTensors {
        ConceptTensors::from_f32(
            dtype,
            2,
            3,
            vec![0.5, -1.0, 2.0],
            vec![1.0, 2.0, 3.0, -4.0, 0.25, -0.0],
            vec![0.0, 1.5, -2.5],
        )
        .unwrap()
    }

    #[test]
    fn canonical_body_orders_tensors_by_name() {
        let t = tiny(DType::F32);
        let st = safetensors::SafeTensors::deserialize(t.safetensors_bytes()).unwrap();
        let mut names = st.names();
        names.sort_by_key(|n| st.tensor(n).unwrap().data().as_ptr() as usize);
        assert_eq!(names, ["head", "identifier", "latents"]);
    }

    #[test]
    fn every_dtype_round_trips_bit_exactly() {
        for dtype in DType::ALL {
            let t = tiny(dtype);
            let back = ConceptTensors::from_safetensors_bytes(&t.to_safetensors_bytes()).unwrap();
            assert_eq!(back, t);
            assert_eq!(back.latents()[5].to_bits(), (-0.0f32).to_bits());
        }
    }

    #[test]
    fn from_f32_rounds_to_the_dtype() {
        let t = ConceptTensors::from_f32(DType::BF16, 1, 1, vec![1.0 + 1e-3], vec![3.0], vec![1.0])
            .unwrap();
        assert_eq!(t.identifier(), &[1.0]);
        let t = ConceptTensors::from_f32(DType::F16, 1, 1, vec![1.0 + 1e-3], vec![3.0], vec![1.0])
            .unwrap();
        assert_eq!(t.identifier(), &[f16::from_f32(1.001).to_f32()]);
    }

    #[test]
    fn from_f32_rejects_overflow_lengths_and_non_finite() {
        let err = ConceptTensors::from_f32(DType::F16, 1, 1, vec![1e6], vec![0.0], vec![0.0])
            .unwrap_err();
        assert_eq!(err.kind(), "ValueOverflow");
        let err = ConceptTensors::from_f32(DType::F32, 2, 1, vec![1.0], vec![0.0], vec![0.0])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "tensor `latents` has 1 elements: expected 2"
        );
        let err = ConceptTensors::from_f32(DType::F32, 1, 1, vec![1.0], vec![0.0], vec![f32::NAN])
            .unwrap_err();
        assert_eq!(err.kind(), "NonFinite");
        let err =
            ConceptTensors::from_f32(DType::F32, 0, 1, vec![1.0], vec![], vec![0.0]).unwrap_err();
        assert_eq!(err.kind(), "DimensionOutOfRange");
    }

    #[test]
    fn stats_summarise_each_tensor() {
        let stats = tiny(DType::F32).stats();
        assert_eq!(stats[0].name, "identifier");
        assert_eq!(stats[0].shape, vec![3]);
        assert_eq!((stats[0].min, stats[0].max), (-1.0, 2.0));
        assert!((stats[0].mean - 0.5).abs() < 1e-6);
        assert!((stats[0].l2_norm - 5.25f32.sqrt()).abs() < 1e-6);
        assert_eq!(stats[1].shape, vec![2, 3]);
    }
}

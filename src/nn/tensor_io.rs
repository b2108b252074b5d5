//! Named f32 tensors in safetensors files: written atomically with a sorted, byte-reproducible
//! header, read (memory-mapped) whatever their stored float type.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{write_atomic, Error, Result};

/// Writes named f32 tensors (name, shape, data) to a safetensors file, atomically.
pub fn save_tensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, &[f32])],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(name, shape, data)| {
            let bytes: &[u8] = bytemuck_f32(data);
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .expect("shape matches data");
            (name.clone(), view)
        })
        .collect();
    let mut bytes =
        safetensors::serialize(views, Some(metadata)).map_err(|e| Error::Invalid(e.to_string()))?;
    sort_header(&mut bytes);
    write_atomic(path, &bytes)
}

/// Rewrites a safetensors header with its keys sorted (serde_json's map is a BTreeMap), in place:
/// the safetensors crate writes the metadata from a `HashMap`, whose order changes from one process
/// to the next, so the same tensors would otherwise give files that differ in their bytes. The
/// header keeps its length (the same keys and values, padded with spaces as the crate pads it),
/// so the data offsets stay valid.
fn sort_header(bytes: &mut [u8]) {
    let Some(n) = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
    else {
        return;
    };
    let Some(header) = bytes.get(8..8 + n) else {
        return;
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(header) else {
        return;
    };
    let mut sorted = serde_json::to_vec(&value).expect("a JSON value serializes");
    if sorted.len() <= n {
        sorted.resize(n, b' ');
        bytes[8..8 + n].copy_from_slice(&sorted);
    }
}

fn bytemuck_f32(data: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any byte pattern is a valid u8; the length is exact.
    unsafe { std::slice::from_raw_parts(data.as_ptr() as *const u8, std::mem::size_of_val(data)) }
}

/// A safetensors file read fully into memory: name -> (shape, f32 data), plus its metadata.
pub struct LoadedTensors {
    pub tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
    pub metadata: HashMap<String, String>,
}

/// Reads every float tensor of a safetensors file as f32 (f16/bf16 are widened; integer buffers
/// are skipped). A truncated or corrupt file is `Error::CorruptCheckpoint` naming the path.
pub fn load_tensors(path: &Path) -> Result<LoadedTensors> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let corrupt = |msg: String| Error::CorruptCheckpoint {
        path: path.to_path_buf(),
        msg,
    };
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let vals: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            safetensors::Dtype::F16 => data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            safetensors::Dtype::BF16 => data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            // Integer buffers (BERT's `position_ids`) are not parameters.
            safetensors::Dtype::I64 | safetensors::Dtype::I32 => continue,
            other => {
                return Err(corrupt(format!(
                    "tensor {name} has unsupported dtype {other:?}"
                )))
            }
        };
        tensors.insert(name, (view.shape().to_vec(), vals));
    }
    Ok(LoadedTensors {
        tensors,
        metadata: meta.metadata().clone().unwrap_or_default(),
    })
}

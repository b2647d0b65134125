//! Hugging Face safetensors in and out: single files, sharded folders with
//! `model.safetensors.index.json`, written atomically ([`crate::fs::write_atomic`]).
use crate::error::{Error, Result};
use crate::weights::WeightMap;
use safetensors::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use tch::{Kind, Tensor};

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        _ => return None,
    })
}

fn dtype_of(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Uint8 => Dtype::U8,
        k => return Err(Error::invalid(format!("cannot store a {k:?} tensor in safetensors"))),
    })
}

/// Reads every tensor of one safetensors file onto the CPU.
pub fn read_file(path: &Path, into: &mut BTreeMap<String, Tensor>) -> Result<()> {
    read_file_with_metadata(path, into).map(|_| ())
}

/// [`read_file`], returning the file's metadata (empty where it has none) from the same read.
pub fn read_file_with_metadata(
    path: &Path,
    into: &mut BTreeMap<String, Tensor>,
) -> Result<std::collections::HashMap<String, String>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: read-only map of a file we do not modify.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let invalid = |e| Error::format(path, format!("not a valid safetensors file: {e}"));
    let (_, header) = SafeTensors::read_metadata(&mmap).map_err(invalid)?;
    let st = SafeTensors::deserialize(&mmap).map_err(invalid)?;
    for (name, view) in st.tensors() {
        let kind = kind_of(view.dtype()).ok_or_else(|| {
            Error::format(path, format!("tensor {name}: dtype {:?} is not supported", view.dtype()))
        })?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)?;
        into.insert(name, t);
    }
    Ok(header.metadata().clone().unwrap_or_default())
}

/// Loads the weights of a Hugging Face model folder (single or sharded safetensors).
pub fn read_folder(dir: &Path) -> Result<WeightMap> {
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<std::path::PathBuf> = if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::format(&index, format!("invalid JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::format(&index, "weight_map: missing or not an object"))?;
        let shards: BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
        shards.into_iter().map(|f| dir.join(f)).collect()
    } else if dir.join("model.safetensors").exists() {
        vec![dir.join("model.safetensors")]
    } else {
        return Err(Error::format(
            dir,
            "no model.safetensors or model.safetensors.index.json in this folder",
        ));
    };
    let mut tensors = BTreeMap::new();
    for f in &files {
        read_file(f, &mut tensors)?;
    }
    Ok(WeightMap { source: if files.len() == 1 { files[0].clone() } else { dir.to_path_buf() }, tensors })
}

struct Bytes {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Bytes {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes tensors to `path` atomically, with optional string metadata in the header.
pub fn write_file(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let mut views = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_device(tch::Device::Cpu).contiguous();
        let numel = t.numel();
        let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut data, numel)?;
        views.push((
            name.clone(),
            Bytes { dtype: dtype_of(t.kind())?, shape: t.size().iter().map(|&d| d as usize).collect(), data },
        ));
    }
    let bytes = safetensors::serialize(views.iter().map(|(n, b)| (n.as_str(), b)), metadata)
        .map_err(|e| Error::format(path, format!("cannot serialise: {e}")))?;
    crate::fs::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_corruption() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path();
        let p = dir.join("model.safetensors");
        let a = Tensor::arange(6, (Kind::Float, tch::Device::Cpu)).view([2, 3]);
        let b = Tensor::from_slice(&[1.5f32, -2.0]).to_kind(Kind::BFloat16);
        write_file(&p, &[("a".into(), a.shallow_clone()), ("b".into(), b.shallow_clone())], None).unwrap();
        let w = read_folder(dir).unwrap();
        assert!(w.tensors["a"].equal(&a));
        assert!(w.tensors["b"].equal(&b));
        assert!(!dir.join("model.safetensors.tmp").exists());
        let full = std::fs::read(&p).unwrap();
        std::fs::write(&p, &full[..full.len() - 3]).unwrap();
        let err = read_folder(dir).err().unwrap().to_string();
        assert!(err.contains("model.safetensors") && err.contains("not a valid safetensors"), "{err}");
    }
}

//! GGUF v2/v3 reader: metadata, tensor directory, and dequantization of each tensor to f32.
//! The file is memory-mapped; every read is bounds-checked so that a truncated or corrupt file
//! gives an error naming the file and the offending field instead of a panic.
use super::dequant::{dequantize, GgmlType};
use crate::error::{Error, Result};
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"GGUF";

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(v) => Some(v),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F64(v) => Some(v),
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// PyTorch order (outermost first), i.e. GGUF's dims reversed.
    pub shape: Vec<usize>,
    pub ty: GgmlType,
    /// Absolute byte offset in the file.
    offset: usize,
    len: usize,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, TensorInfo>,
}

struct Cursor<'a> {
    path: &'a Path,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(Error::format(
                self.path,
                format!(
                    "truncated GGUF: reading {what} needs {n} bytes at offset {}, file has {}",
                    self.pos,
                    self.buf.len()
                ),
            )),
        }
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }
    fn len(&mut self, what: &str) -> Result<usize> {
        let n = self.u64(what)?;
        // No length or count can exceed the bytes left; this also rejects garbage before allocating.
        let left = self.buf.len() - self.pos;
        if n > left as u64 {
            return Err(Error::format(
                self.path,
                format!("truncated or corrupt GGUF: {what} is {n}, but only {left} bytes follow"),
            ));
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.len(what)?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| Error::format(self.path, format!("corrupt GGUF: {what} is not UTF-8")))
    }
    fn value(&mut self, ty: u32, what: &str) -> Result<Value> {
        Ok(match ty {
            0 => Value::U64(self.u8(what)? as u64),
            1 => Value::I64(self.u8(what)? as i8 as i64),
            2 => Value::U64(u16::from_le_bytes(self.take(2, what)?.try_into().unwrap()) as u64),
            3 => Value::I64(i16::from_le_bytes(self.take(2, what)?.try_into().unwrap()) as i64),
            4 => Value::U64(self.u32(what)? as u64),
            5 => Value::I64(self.u32(what)? as i32 as i64),
            6 => Value::F64(f32::from_bits(self.u32(what)?) as f64),
            7 => Value::Bool(self.u8(what)? != 0),
            8 => Value::Str(self.string(what)?),
            9 => {
                let ety = self.u32(what)?;
                if ety == 9 {
                    // llama.cpp does not read them either, and nesting would recurse without bound.
                    return Err(Error::format(
                        self.path,
                        format!("corrupt GGUF: {what} is an array of arrays"),
                    ));
                }
                let n = self.len(what)?;
                let mut v = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    v.push(self.value(ety, what)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(self.u64(what)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(what)?)),
            t => {
                return Err(Error::format(
                    self.path,
                    format!("corrupt GGUF: {what} has unknown value type {t}"),
                ))
            }
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only and the file is not modified while we hold it.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let mut c = Cursor { path, buf: &mmap, pos: 0 };
        let magic = c.take(4, "magic")?;
        if magic != MAGIC {
            return Err(Error::format(
                path,
                format!("not a GGUF file: magic is {magic:?}, expected \"GGUF\""),
            ));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(Error::format(path, format!("unsupported GGUF version {version}, expected 2 or 3")));
        }
        let n_tensors = c.len("tensor count")?;
        let n_kv = c.len("metadata count")?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key #{i}"))?;
            let ty = c.u32(&key)?;
            let v = c.value(ty, &key)?;
            metadata.insert(key, v);
        }
        let mut infos = Vec::with_capacity(n_tensors.min(1 << 16));
        for i in 0..n_tensors {
            let name = c.string(&format!("tensor name #{i}"))?;
            let n_dims = c.u32(&name)? as usize;
            if n_dims > 4 {
                return Err(Error::format(path, format!("tensor {name}: {n_dims} dims, at most 4 expected")));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(c.len(&name)?);
            }
            dims.reverse();
            let ty_id = c.u32(&name)?;
            let ty = GgmlType::from_id(ty_id).ok_or_else(|| {
                Error::format(
                    path,
                    format!(
                        "tensor {name}: unsupported quantization type id {ty_id} (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)"
                    ),
                )
            })?;
            let offset = c.u64(&name)? as usize;
            infos.push((name, dims, ty, offset));
        }
        let align = match metadata.get("general.alignment") {
            Some(v) => v
                .as_u64()
                .filter(|a| *a > 0 && a.is_power_of_two())
                .ok_or_else(|| Error::format(path, "general.alignment is not a power of two"))?
                as usize,
            None => 32,
        };
        let data_start = c.pos.div_ceil(align) * align;
        // As llama.cpp checks: tensors lie back to back in the order of the directory, each
        // padded to the alignment, so a shifted offset or a changed type cannot go unnoticed.
        let mut tensors = BTreeMap::new();
        let mut expected_rel = 0usize;
        for (name, shape, ty, rel) in infos {
            let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            let len = numel.and_then(|n| ty.bytes_for(n)).ok_or_else(|| {
                Error::format(
                    path,
                    format!("tensor {name}: shape {shape:?} is not a whole number of {ty:?} blocks"),
                )
            })?;
            if rel != expected_rel {
                return Err(Error::format(
                    path,
                    format!(
                        "corrupt GGUF: tensor {name} has data offset {rel}, expected {expected_rel} (the previous tensors' padded sizes)"
                    ),
                ));
            }
            expected_rel = rel
                .checked_add(len)
                .map(|e| e.div_ceil(align) * align)
                .ok_or_else(|| Error::format(path, format!("corrupt GGUF: tensor {name} is too large")))?;
            let offset = data_start + rel;
            if offset.checked_add(len).is_none_or(|end| end > mmap.len()) {
                return Err(Error::format(
                    path,
                    format!(
                        "truncated GGUF: tensor {name} needs bytes {offset}..{} but the file has {}",
                        offset.saturating_add(len),
                        mmap.len()
                    ),
                ));
            }
            if tensors.contains_key(&name) {
                return Err(Error::format(path, format!("corrupt GGUF: tensor {name} is listed twice")));
            }
            tensors.insert(name.clone(), TensorInfo { name, shape, ty, offset, len });
        }
        Ok(GgufFile { path: path.to_path_buf(), mmap, version, metadata, tensors })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes before the tensor data: the header, metadata and tensor directory, padded.
    pub fn header_len(&self) -> usize {
        self.tensors.values().map(|t| t.offset).min().unwrap_or(self.mmap.len())
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    fn missing(&self, key: &str, what: &str) -> Error {
        Error::format(&self.path, format!("metadata {key}: missing or not {what}"))
    }

    pub fn req_u64(&self, key: &str) -> Result<u64> {
        self.get(key).and_then(Value::as_u64).ok_or_else(|| self.missing(key, "an integer"))
    }

    pub fn req_f64(&self, key: &str) -> Result<f64> {
        self.get(key).and_then(Value::as_f64).ok_or_else(|| self.missing(key, "a number"))
    }

    pub fn req_str(&self, key: &str) -> Result<&str> {
        self.get(key).and_then(Value::as_str).ok_or_else(|| self.missing(key, "a string"))
    }

    pub fn opt_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    pub fn opt_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }

    /// Dequantizes a tensor to f32, returning its values and PyTorch-order shape.
    pub fn read_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::format(&self.path, format!("missing tensor {name}")))?;
        let mut out = vec![0f32; info.numel()];
        dequantize(info.ty, &self.mmap[info.offset..info.offset + info.len], &mut out);
        Ok((out, info.shape.clone()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a minimal GGUF v3 file with the given metadata strings and F32 tensors.
    pub fn write_gguf(path: &Path, meta: &[(&str, &str)], tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
        let mut b = Vec::new();
        b.extend(MAGIC);
        b.extend(3u32.to_le_bytes());
        b.extend((tensors.len() as u64).to_le_bytes());
        b.extend((meta.len() as u64).to_le_bytes());
        let s = |b: &mut Vec<u8>, x: &str| {
            b.extend((x.len() as u64).to_le_bytes());
            b.extend(x.as_bytes());
        };
        for (k, v) in meta {
            s(&mut b, k);
            b.extend(8u32.to_le_bytes());
            s(&mut b, v);
        }
        let mut off = 0u64;
        for (name, shape, data) in tensors {
            s(&mut b, name);
            b.extend((shape.len() as u32).to_le_bytes());
            for d in shape.iter().rev() {
                b.extend((*d as u64).to_le_bytes());
            }
            b.extend(0u32.to_le_bytes());
            b.extend(off.to_le_bytes());
            off += (data.len() * 4).div_ceil(32) as u64 * 32;
        }
        while b.len() % 32 != 0 {
            b.push(0);
        }
        for (_, _, data) in tensors {
            let start = b.len();
            for x in data {
                b.extend(x.to_le_bytes());
            }
            while (b.len() - start) % 32 != 0 {
                b.push(0);
            }
        }
        std::fs::write(path, b).unwrap();
    }

    /// A scratch file path ending in `-{name}`, removed when it drops.
    fn tmp(name: &str) -> tempfile::TempPath {
        tempfile::Builder::new().suffix(&format!("-{name}")).tempfile().unwrap().into_temp_path()
    }

    #[test]
    fn roundtrip_small_file() {
        let p = tmp("ok.gguf");
        write_gguf(
            &p,
            &[("general.architecture", "llama")],
            &[("a", vec![2, 3], (0..6).map(|x| x as f32).collect())],
        );
        let g = GgufFile::open(&p).unwrap();
        assert_eq!(g.req_str("general.architecture").unwrap(), "llama");
        let (v, s) = g.read_f32("a").unwrap();
        assert_eq!(s, vec![2, 3]);
        assert_eq!(v, vec![0., 1., 2., 3., 4., 5.]);
        let err = g.read_f32("b").unwrap_err().to_string();
        assert!(err.contains("missing tensor b"), "{err}");
    }

    #[test]
    fn wrong_magic_is_named() {
        let p = tmp("magic.gguf");
        std::fs::write(&p, b"GGML\x03\0\0\0").unwrap();
        let err = GgufFile::open(&p).err().unwrap().to_string();
        assert!(err.contains("magic") && err.contains("magic.gguf"), "{err}");
    }

    #[test]
    fn truncated_file_is_named() {
        let p = tmp("trunc.gguf");
        write_gguf(&p, &[("general.architecture", "llama")], &[("a", vec![64], vec![1.0; 64])]);
        let full = std::fs::read(&p).unwrap();
        for cut in [3, 20, 60, full.len() - 10] {
            std::fs::write(&p, &full[..cut]).unwrap();
            let err = GgufFile::open(&p).err().unwrap().to_string();
            assert!(err.contains("truncated") && err.contains("trunc.gguf"), "cut {cut}: {err}");
        }
    }

    /// The byte where the only tensor's type id (then its offset) sits in a `write_gguf` file
    /// with no metadata and a one-letter, one-dim tensor.
    const ONE_TENSOR_TYPE_AT: usize = 24 + 8 + 1 + 4 + 8;

    #[test]
    fn nested_arrays_are_refused_without_recursing() {
        let p = tmp("nested.gguf");
        let mut b = Vec::new();
        b.extend(MAGIC);
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.push(b'k');
        // 100,000 levels of one-element arrays of arrays: a recursive reader overflows its stack.
        b.extend(9u32.to_le_bytes());
        for _ in 0..100_000 {
            b.extend(9u32.to_le_bytes());
            b.extend(1u64.to_le_bytes());
        }
        std::fs::write(&p, b).unwrap();
        let err = GgufFile::open(&p).err().unwrap().to_string();
        assert!(err.contains("k is an array of arrays"), "{err}");
    }

    #[test]
    fn shifted_offsets_and_changed_types_are_refused() {
        let p = tmp("shift.gguf");
        write_gguf(&p, &[], &[("a", vec![64], vec![1.0; 64]), ("b", vec![64], vec![2.0; 64])]);
        let good = std::fs::read(&p).unwrap();
        // The second tensor's offset sits after the first's entry (name 1+8, dims 4+8, type 4, offset 8).
        let second_offset_at = 24 + 9 + 4 + 8 + 4 + 8 + 9 + 4 + 8 + 4;
        let mut b = good.clone();
        b[second_offset_at..second_offset_at + 8].copy_from_slice(&(256u64 + 32).to_le_bytes());
        std::fs::write(&p, &b).unwrap();
        let err = GgufFile::open(&p).err().unwrap().to_string();
        assert!(err.contains("tensor b has data offset 288, expected 256"), "{err}");
        // F32 -> F16 halves the first tensor's bytes, so the second no longer follows it.
        let mut b = good.clone();
        b[ONE_TENSOR_TYPE_AT..ONE_TENSOR_TYPE_AT + 4].copy_from_slice(&1u32.to_le_bytes());
        std::fs::write(&p, &b).unwrap();
        let err = GgufFile::open(&p).err().unwrap().to_string();
        assert!(err.contains("tensor b has data offset 256, expected 128"), "{err}");
        // A dimension whose product overflows is an error, not a wrapped size.
        let mut b = good;
        b[24 + 9 + 4..24 + 9 + 4 + 8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        std::fs::write(&p, &b).unwrap();
        assert!(GgufFile::open(&p).is_err());
    }

    #[test]
    fn unknown_quant_type_is_named() {
        let p = tmp("qtype.gguf");
        write_gguf(&p, &[], &[("w", vec![32], vec![0.0; 32])]);
        let mut b = std::fs::read(&p).unwrap();
        let at = ONE_TENSOR_TYPE_AT;
        b[at..at + 4].copy_from_slice(&19u32.to_le_bytes());
        std::fs::write(&p, b).unwrap();
        let err = GgufFile::open(&p).err().unwrap().to_string();
        assert!(err.contains("unsupported quantization type id 19") && err.contains("tensor w"), "{err}");
    }
}

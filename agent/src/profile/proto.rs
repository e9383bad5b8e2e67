//! A minimal protocol buffers encoder and the messages of pprof's
//! `profile.proto` (github.com/google/pprof/proto/profile.proto) that
//! goalloc writes. Written by hand because the generated types of the
//! available crates need protoc or a prost stack at build time for a
//! handful of messages; field numbers are from that file.
//!
//! Wire format used: varint (wire type 0) for integers, length-delimited
//! (wire type 2) for strings, nested messages and packed repeated integers.
//! Zero scalars are omitted as proto3 does (readers take them as zero).

/// Appends the base-128 varint of `v`.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

/// An integer field (int64 as its two's complement, as protobuf does).
pub fn put_uint(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        put_key(out, field, 0);
        put_varint(out, v);
    }
}

pub fn put_int(out: &mut Vec<u8>, field: u32, v: i64) {
    put_uint(out, field, v as u64);
}

pub fn put_bool(out: &mut Vec<u8>, field: u32, v: bool) {
    put_uint(out, field, u64::from(v));
}

/// A length-delimited field (bytes, string or an encoded message). Always
/// written, even empty: a repeated message or string must keep its place
/// (the string table's first entry is "").
pub fn put_bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    put_key(out, field, 2);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A packed repeated integer field (omitted when empty).
pub fn put_packed(out: &mut Vec<u8>, field: u32, vs: impl IntoIterator<Item = u64>) {
    let mut body = Vec::new();
    for v in vs {
        put_varint(&mut body, v);
    }
    if !body.is_empty() {
        put_bytes(out, field, &body);
    }
}

/// `ValueType`: indices into the string table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueType {
    pub kind: i64,
    pub unit: i64,
}

impl ValueType {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        put_int(&mut b, 1, self.kind);
        put_int(&mut b, 2, self.unit);
        b
    }
}

/// `Label`: a string (`str`) or numeric (`num`, `num_unit`) label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub key: i64,
    pub str: i64,
    pub num: i64,
    pub num_unit: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Innermost first.
    pub location_ids: Vec<u64>,
    pub values: Vec<i64>,
    pub labels: Vec<Label>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub id: u64,
    pub memory_start: u64,
    pub memory_limit: u64,
    pub file_offset: u64,
    pub filename: i64,
    pub build_id: i64,
    pub has_functions: bool,
    pub has_filenames: bool,
    pub has_line_numbers: bool,
    pub has_inline_frames: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Line {
    pub function_id: u64,
    pub line: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub id: u64,
    pub mapping_id: u64,
    pub address: u64,
    /// Innermost first: inlined frames, then the physical function.
    pub lines: Vec<Line>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    pub id: u64,
    pub name: i64,
    pub system_name: i64,
    pub filename: i64,
    pub start_line: i64,
}

/// `Profile`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    pub sample_types: Vec<ValueType>,
    pub samples: Vec<Sample>,
    pub mappings: Vec<Mapping>,
    pub locations: Vec<Location>,
    pub functions: Vec<Function>,
    pub string_table: Vec<String>,
    pub time_nanos: i64,
    pub duration_nanos: i64,
    pub period_type: Option<ValueType>,
    pub period: i64,
    pub comments: Vec<i64>,
    pub default_sample_type: i64,
}

impl Profile {
    /// The protobuf encoding (not compressed).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for t in &self.sample_types {
            put_bytes(&mut out, 1, &t.encode());
        }
        for s in &self.samples {
            let mut b = Vec::new();
            put_packed(&mut b, 1, s.location_ids.iter().copied());
            put_packed(&mut b, 2, s.values.iter().map(|&v| v as u64));
            for l in &s.labels {
                let mut lb = Vec::new();
                put_int(&mut lb, 1, l.key);
                put_int(&mut lb, 2, l.str);
                put_int(&mut lb, 3, l.num);
                put_int(&mut lb, 4, l.num_unit);
                put_bytes(&mut b, 3, &lb);
            }
            put_bytes(&mut out, 2, &b);
        }
        for m in &self.mappings {
            let mut b = Vec::new();
            put_uint(&mut b, 1, m.id);
            put_uint(&mut b, 2, m.memory_start);
            put_uint(&mut b, 3, m.memory_limit);
            put_uint(&mut b, 4, m.file_offset);
            put_int(&mut b, 5, m.filename);
            put_int(&mut b, 6, m.build_id);
            put_bool(&mut b, 7, m.has_functions);
            put_bool(&mut b, 8, m.has_filenames);
            put_bool(&mut b, 9, m.has_line_numbers);
            put_bool(&mut b, 10, m.has_inline_frames);
            put_bytes(&mut out, 3, &b);
        }
        for l in &self.locations {
            let mut b = Vec::new();
            put_uint(&mut b, 1, l.id);
            put_uint(&mut b, 2, l.mapping_id);
            put_uint(&mut b, 3, l.address);
            for line in &l.lines {
                let mut lb = Vec::new();
                put_uint(&mut lb, 1, line.function_id);
                put_int(&mut lb, 2, line.line);
                put_bytes(&mut b, 4, &lb);
            }
            put_bytes(&mut out, 4, &b);
        }
        for f in &self.functions {
            let mut b = Vec::new();
            put_uint(&mut b, 1, f.id);
            put_int(&mut b, 2, f.name);
            put_int(&mut b, 3, f.system_name);
            put_int(&mut b, 4, f.filename);
            put_int(&mut b, 5, f.start_line);
            put_bytes(&mut out, 5, &b);
        }
        for s in &self.string_table {
            put_bytes(&mut out, 6, s.as_bytes());
        }
        put_int(&mut out, 9, self.time_nanos);
        put_int(&mut out, 10, self.duration_nanos);
        if let Some(t) = &self.period_type {
            put_bytes(&mut out, 11, &t.encode());
        }
        put_int(&mut out, 12, self.period);
        put_packed(&mut out, 13, self.comments.iter().map(|&c| c as u64));
        put_int(&mut out, 14, self.default_sample_type);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        let enc = |v| {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            b
        };
        assert_eq!(enc(0), [0]);
        assert_eq!(enc(1), [1]);
        assert_eq!(enc(300), [0xac, 0x02]);
        assert_eq!(
            enc(u64::MAX),
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
        // int64 -1 is ten bytes, as protobuf encodes negative int64.
        let mut b = Vec::new();
        put_int(&mut b, 1, -1);
        assert_eq!(b.len(), 11);
    }

    #[test]
    fn fields() {
        let mut b = Vec::new();
        put_uint(&mut b, 1, 150);
        assert_eq!(b, [0x08, 0x96, 0x01]); // the protobuf docs' example
        let mut b = Vec::new();
        put_uint(&mut b, 3, 0);
        assert!(b.is_empty());
        put_bytes(&mut b, 2, b"testing");
        assert_eq!(b, [0x12, 0x07, b't', b'e', b's', b't', b'i', b'n', b'g']);
        let mut b = Vec::new();
        put_packed(&mut b, 4, [3, 270, 86942]);
        assert_eq!(b, [0x22, 0x06, 0x03, 0x8e, 0x02, 0x9e, 0xa7, 0x05]);
        let mut b = Vec::new();
        put_packed(&mut b, 4, []);
        assert!(b.is_empty());
    }

    #[test]
    fn empty_string_table_entry_is_kept() {
        let p = Profile {
            string_table: vec![String::new(), "x".into()],
            ..Profile::default()
        };
        assert_eq!(p.encode(), [0x32, 0x00, 0x32, 0x01, b'x']);
    }
}

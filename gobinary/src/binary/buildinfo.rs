//! Go build info: the `.go.buildinfo` blob written by the Go linker
//! (toolchain version string and module/build settings, as printed by
//! `go version -m`).

use super::bytes::{slice, uvarint, word};
use super::version::{GoVersion, version_experiments};

/// The 14-byte magic at the start of the build info blob.
pub const BUILDINFO_MAGIC: &[u8; 14] = b"\xff Go buildinf:";
/// Size of the fixed header (magic, ptr size, flags, two pointers, padding).
pub const BUILDINFO_HEADER_SIZE: usize = 32;
/// The blob is aligned to this many bytes in memory.
pub const BUILDINFO_ALIGN: u64 = 16;

const FLAG_BIG_ENDIAN: u8 = 1;
const FLAG_INLINE_STRINGS: u8 = 2;
/// Longest string we will read through a pointer (pre-1.18 layout).
const MAX_STRING: u64 = 16 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildInfoError {
    #[error("the \"\\xff Go buildinf:\" magic is missing")]
    BadMagic,
    #[error("the header is truncated")]
    Truncated,
    #[error("invalid pointer size {0}")]
    BadPtrSize(u8),
    #[error("the {0} string is truncated or has an invalid length")]
    BadString(&'static str),
    #[error("the {what} pointer {addr:#x} does not point into the file")]
    BadPointer { what: &'static str, addr: u64 },
    #[error("the Go version string is empty")]
    EmptyVersion,
    #[error("unrecognised Go version string {0:?}")]
    BadVersion(String),
}

/// Decoded build info.
#[derive(Debug, Clone)]
pub struct BuildInfo {
    /// Raw version string as in the binary, e.g. "go1.27.3-X:nosizespecializedmalloc".
    pub go_version: String,
    pub version: GoVersion,
    /// Experiments from the version suffix ("X:a,b") and the GOEXPERIMENT build
    /// setting, lowercased and deduplicated, in order of first appearance.
    pub experiments: Vec<String>,
    /// The "path" line of the module info (main package path).
    pub path: Option<String>,
    /// The "build" lines of the module info, e.g. ("GOARCH", "amd64"),
    /// ("-ldflags", "-s -w"). Quoted values are unquoted.
    pub settings: Vec<(String, String)>,
}

impl BuildInfo {
    /// The value of a build setting ("GOARCH", "CGO_ENABLED", "-ldflags", ...).
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the binary was built with GOEXPERIMENT `name` (case-insensitive),
    /// e.g. "nosizespecializedmalloc".
    pub fn has_experiment(&self, name: &str) -> bool {
        self.experiments
            .iter()
            .any(|e| e.eq_ignore_ascii_case(name.trim()))
    }

    /// Builds a `BuildInfo` from the raw version string and the module info
    /// text without its binary sentinels (see [`strip_sentinels`]).
    pub fn from_strings(go_version: &str, modinfo: &str) -> Result<BuildInfo, BuildInfoError> {
        if go_version.trim().is_empty() {
            return Err(BuildInfoError::EmptyVersion);
        }
        let version = GoVersion::parse(go_version)
            .ok_or_else(|| BuildInfoError::BadVersion(go_version.to_string()))?;
        let (path, settings) = parse_mod_info(modinfo);
        let mut experiments: Vec<String> = Vec::new();
        let from_setting = settings
            .iter()
            .filter(|(k, _)| k == "GOEXPERIMENT")
            .flat_map(|(_, v)| v.split(','))
            .map(|e| e.trim().to_ascii_lowercase())
            .filter(|e| !e.is_empty());
        for e in version_experiments(go_version)
            .into_iter()
            .chain(from_setting)
        {
            if !experiments.contains(&e) {
                experiments.push(e);
            }
        }
        Ok(BuildInfo {
            go_version: go_version.to_string(),
            version,
            experiments,
            path,
            settings,
        })
    }
}

/// Parses the build info blob. `data` starts at the magic (the
/// `.go.buildinfo` section, or the bytes found by searching for the magic);
/// it may extend past the blob. `read(vaddr, len)` must return `len` file
/// bytes at a virtual address (used only by the pre-1.18 layout, where the
/// header holds pointers to Go string headers).
pub fn parse_build_info<'r, F>(data: &[u8], read: F) -> Result<BuildInfo, BuildInfoError>
where
    F: Fn(u64, u64) -> Option<&'r [u8]>,
{
    if data.len() < BUILDINFO_MAGIC.len() || !data.starts_with(BUILDINFO_MAGIC) {
        return Err(BuildInfoError::BadMagic);
    }
    let header = data
        .get(..BUILDINFO_HEADER_SIZE)
        .ok_or(BuildInfoError::Truncated)?;
    let ptr_size = header.get(14).copied().ok_or(BuildInfoError::Truncated)?;
    let flags = header.get(15).copied().ok_or(BuildInfoError::Truncated)?;

    let (version, modinfo) = if flags & FLAG_INLINE_STRINGS != 0 {
        // Go 1.18+: two varint-prefixed strings right after the header.
        let rest = data.get(BUILDINFO_HEADER_SIZE..).unwrap_or(&[]);
        let (version, used) = inline_string(rest).ok_or(BuildInfoError::BadString("version"))?;
        let rest = rest.get(used..).unwrap_or(&[]);
        let (modinfo, _) = inline_string(rest).ok_or(BuildInfoError::BadString("module info"))?;
        (decode(version), decode(strip_sentinels(modinfo)))
    } else {
        // Before 1.18: pointers to Go string headers (ptr, len) in data.
        if ptr_size != 4 && ptr_size != 8 {
            return Err(BuildInfoError::BadPtrSize(ptr_size));
        }
        let big = flags & FLAG_BIG_ENDIAN != 0;
        let version_ptr = word(header, 16, ptr_size, big).ok_or(BuildInfoError::Truncated)?;
        let modinfo_ptr = word(header, 16 + u64::from(ptr_size), ptr_size, big)
            .ok_or(BuildInfoError::Truncated)?;
        let version = pointed_string(&read, version_ptr, ptr_size, big, "version")?;
        let modinfo = pointed_string(&read, modinfo_ptr, ptr_size, big, "module info")?;
        (decode(version), decode(strip_sentinels(modinfo)))
    };
    BuildInfo::from_strings(&version, &modinfo)
}

fn decode(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A uvarint length followed by that many bytes; returns the bytes and the
/// total number of bytes consumed.
fn inline_string(d: &[u8]) -> Option<(&[u8], usize)> {
    let (len, n) = uvarint(d)?;
    let s = slice(d, n as u64, len)?;
    Some((s, n.checked_add(s.len())?))
}

/// Reads the Go string whose header (data pointer, length) is at `addr`.
fn pointed_string<'a, F>(
    read: &F,
    addr: u64,
    ptr_size: u8,
    big: bool,
    what: &'static str,
) -> Result<&'a [u8], BuildInfoError>
where
    F: Fn(u64, u64) -> Option<&'a [u8]>,
{
    let hdr =
        read(addr, 2 * u64::from(ptr_size)).ok_or(BuildInfoError::BadPointer { what, addr })?;
    let ptr = word(hdr, 0, ptr_size, big).ok_or(BuildInfoError::BadString(what))?;
    let len =
        word(hdr, u64::from(ptr_size), ptr_size, big).ok_or(BuildInfoError::BadString(what))?;
    if len == 0 {
        return Ok(&[]);
    }
    if len > MAX_STRING {
        return Err(BuildInfoError::BadString(what));
    }
    let s = read(ptr, len).ok_or(BuildInfoError::BadPointer { what, addr: ptr })?;
    // `read` is caller-supplied: do not trust it to honour `len`.
    s.get(..usize::try_from(len).unwrap_or(usize::MAX))
        .ok_or(BuildInfoError::BadString(what))
}

/// Strips the 16-byte sentinels around raw module info bytes, when present
/// (Go's own rule: at least 33 bytes and a newline 17 bytes from the end).
pub fn strip_sentinels(modinfo: &[u8]) -> &[u8] {
    let n = modinfo.len();
    if n >= 33
        && modinfo.get(n - 17) == Some(&b'\n')
        && let Some(inner) = modinfo.get(16..n - 16)
    {
        return inner;
    }
    modinfo
}

/// Parses module info text (without sentinels, as `go version -m` prints it)
/// into the main package path and the build settings.
pub fn parse_mod_info(text: &str) -> (Option<String>, Vec<(String, String)>) {
    let mut path = None;
    let mut settings = Vec::new();
    for line in text.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let Some((kind, rest)) = line.split_once('\t') else {
            continue;
        };
        match kind {
            "path" if path.is_none() => path = Some(rest.to_string()),
            "build" => {
                if let Some(kv) = parse_setting(rest) {
                    settings.push(kv);
                }
            }
            _ => {}
        }
    }
    (path, settings)
}

/// One "build" line body: KEY=VALUE, where KEY and VALUE may be Go-quoted.
fn parse_setting(s: &str) -> Option<(String, String)> {
    let (key, rest) = if s.starts_with('"') {
        let end = quoted_end(s)?;
        let key = unquote(s.get(..end)?)?;
        (key, s.get(end..)?.strip_prefix('=')?)
    } else {
        let (k, v) = s.split_once('=')?;
        (k.to_string(), v)
    };
    if key.is_empty() {
        return None;
    }
    let value = if rest.starts_with('"') {
        unquote(rest).unwrap_or_else(|| rest.to_string())
    } else {
        rest.to_string()
    };
    Some((key, value))
}

/// Byte index just past the closing quote of the Go string literal at the
/// start of `s`.
fn quoted_end(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// A subset of Go's `strconv.Unquote` for double-quoted strings.
fn unquote(s: &str) -> Option<String> {
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            if c == '"' {
                return None;
            }
            out.push(c);
            continue;
        }
        let e = chars.next()?;
        match e {
            'a' => out.push('\u{7}'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'v' => out.push('\u{b}'),
            '\\' | '"' | '\'' => out.push(e),
            'x' | 'u' | 'U' => {
                let n = match e {
                    'x' => 2,
                    'u' => 4,
                    _ => 8,
                };
                let hex: String = chars.by_ref().take(n).collect();
                if hex.len() != n {
                    return None;
                }
                let v = u32::from_str_radix(&hex, 16).ok()?;
                out.push(char::from_u32(v)?);
            }
            '0'..='7' => {
                let rest: String = chars.by_ref().take(2).collect();
                if rest.len() != 2 {
                    return None;
                }
                let mut oct = String::from(e);
                oct.push_str(&rest);
                let v = u32::from_str_radix(&oct, 8).ok()?;
                out.push(char::from_u32(v)?);
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SENTINEL_START: &[u8; 16] = b"0w\xaf\x0c\x92t\x08\x02A\xe1\xc1\x07\xe6\xd6\x18\xe6";
    const SENTINEL_END: &[u8; 16] = b"\xf92C1\x86\x18 r\x00\x82B\x10A\x16\xd8\xf2";

    fn modinfo_bytes(text: &str) -> Vec<u8> {
        let mut m = SENTINEL_START.to_vec();
        m.extend_from_slice(text.as_bytes());
        m.extend_from_slice(SENTINEL_END);
        m
    }

    const MODINFO: &str = "path\texample.com/hello\nmod\texample.com/hello\t(devel)\t\n\
        build\t-buildmode=exe\nbuild\t-ldflags=\"-s -w\"\nbuild\tCGO_ENABLED=0\n\
        build\tGOARCH=amd64\nbuild\tGOEXPERIMENT=NoSizeSpecializedMalloc,foo\nbuild\tGOOS=linux\n";

    fn new_format(version: &str, modinfo: &[u8]) -> Vec<u8> {
        let mut d = BUILDINFO_MAGIC.to_vec();
        d.push(8);
        d.push(FLAG_INLINE_STRINGS);
        d.resize(32, 0);
        d.push(version.len() as u8);
        d.extend_from_slice(version.as_bytes());
        let mut n = modinfo.len();
        while n >= 0x80 {
            d.push((n as u8) | 0x80);
            n >>= 7;
        }
        d.push(n as u8);
        d.extend_from_slice(modinfo);
        d
    }

    fn no_read(_: u64, _: u64) -> Option<&'static [u8]> {
        None
    }

    #[test]
    fn parses_inline_format() {
        let d = new_format(
            "go1.27.3-X:nosizespecializedmalloc",
            &modinfo_bytes(MODINFO),
        );
        let bi = parse_build_info(&d, no_read).unwrap();
        assert_eq!(bi.go_version, "go1.27.3-X:nosizespecializedmalloc");
        assert_eq!(bi.version, GoVersion::new(1, 27, 3));
        assert_eq!(bi.path.as_deref(), Some("example.com/hello"));
        assert_eq!(bi.setting("-ldflags"), Some("-s -w"));
        assert_eq!(bi.setting("GOARCH"), Some("amd64"));
        assert_eq!(bi.setting("CGO_ENABLED"), Some("0"));
        assert_eq!(bi.setting("nope"), None);
        assert_eq!(bi.experiments, vec!["nosizespecializedmalloc", "foo"]);
        assert!(bi.has_experiment("NoSizeSpecializedMalloc"));
        assert!(!bi.has_experiment("bar"));
    }

    #[test]
    fn parses_pointer_format() {
        // Blob at vaddr 0x1000, string headers at 0x2000/0x2010, strings at 0x3000/0x3100.
        let mut blob = BUILDINFO_MAGIC.to_vec();
        blob.push(8);
        blob.push(0);
        blob.extend_from_slice(&0x2000u64.to_le_bytes());
        blob.extend_from_slice(&0x2010u64.to_le_bytes());
        blob.resize(32, 0);
        let version = b"go1.16.15".to_vec();
        let modinfo = modinfo_bytes("path\tcmd/foo\nbuild\tGOARCH=arm64\n");
        let mut headers = Vec::new();
        headers.extend_from_slice(&0x3000u64.to_le_bytes());
        headers.extend_from_slice(&(version.len() as u64).to_le_bytes());
        headers.extend_from_slice(&0x3100u64.to_le_bytes());
        headers.extend_from_slice(&(modinfo.len() as u64).to_le_bytes());
        let mem: Vec<(u64, Vec<u8>)> =
            vec![(0x2000, headers), (0x3000, version), (0x3100, modinfo)];
        let read = |addr: u64, len: u64| -> Option<&[u8]> {
            mem.iter().find_map(|(base, bytes)| {
                let off = addr.checked_sub(*base)?;
                slice(bytes, off, len)
            })
        };
        let bi = parse_build_info(&blob, read).unwrap();
        assert_eq!(bi.go_version, "go1.16.15");
        assert_eq!(bi.version, GoVersion::new(1, 16, 15));
        assert_eq!(bi.path.as_deref(), Some("cmd/foo"));
        assert_eq!(bi.setting("GOARCH"), Some("arm64"));

        // Dangling pointer.
        assert!(matches!(
            parse_build_info(&blob, no_read),
            Err(BuildInfoError::BadPointer { .. })
        ));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(
            parse_build_info(b"", no_read).unwrap_err(),
            BuildInfoError::BadMagic
        );
        assert_eq!(
            parse_build_info(b"\xff Go buildinf:\x08\x02", no_read).unwrap_err(),
            BuildInfoError::Truncated
        );
        let mut d = new_format("go1.21.0", b"");
        d[32] = 200; // length past the end
        assert_eq!(
            parse_build_info(&d, no_read).unwrap_err(),
            BuildInfoError::BadString("version")
        );
        let d = new_format("", b"");
        assert_eq!(
            parse_build_info(&d, no_read).unwrap_err(),
            BuildInfoError::EmptyVersion
        );
        let d = new_format("banana", b"");
        assert!(matches!(
            parse_build_info(&d, no_read).unwrap_err(),
            BuildInfoError::BadVersion(_)
        ));
        let mut d = new_format("go1.21.0", b"");
        d[15] = 0;
        d[14] = 3;
        assert_eq!(
            parse_build_info(&d, no_read).unwrap_err(),
            BuildInfoError::BadPtrSize(3)
        );
        // Every truncation of a valid blob fails cleanly or parses.
        let d = new_format("go1.21.0", &modinfo_bytes(MODINFO));
        for n in 0..d.len() {
            let _ = parse_build_info(&d[..n], no_read);
        }
    }

    #[test]
    fn mod_info_without_sentinels_and_quoted_keys() {
        let (path, settings) = parse_mod_info(
            "path\tx\nbuild\t\"we=ird\"=\"a\\tb\\x41\\u00e9\\101\"\nbuild\tbad\nbuild\t=x\n",
        );
        assert_eq!(path.as_deref(), Some("x"));
        assert_eq!(
            settings,
            vec![("we=ird".to_string(), "a\tbAéA".to_string())]
        );
        assert_eq!(unquote("\"\\q\""), None);
        assert_eq!(unquote("\"a\"b\""), None);
        assert_eq!(unquote("\"\\x4\""), None);
        assert_eq!(strip_sentinels(b"short"), b"short");
        let m = modinfo_bytes("path\tx\nbuild\tGOAMD64=v1\n");
        assert_eq!(strip_sentinels(&m), b"path\tx\nbuild\tGOAMD64=v1\n");
    }
}

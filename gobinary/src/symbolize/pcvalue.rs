//! Go's pc-value tables: the compact encoding of "value as a function of
//! the program counter" behind pcsp, pcfile, pcln and every pcdata table
//! (`runtime.pcvalue` and `runtime.step` in `runtime/symtab.go`).
//!
//! A table is a run of pairs (value delta, pc delta): the value delta is a
//! zig-zag encoded uvarint (`-(v & 1) ^ (v >> 1)`), the pc delta a uvarint
//! counted in units of the instruction quantum (minLC). The value starts at
//! -1 and the pc at the function's entry; each pair adds its value delta,
//! then says the value holds for the next `pc delta` bytes. A zero byte
//! where a value delta is due ends the table, except while the pc is still
//! at the entry (the first pair may have a zero delta).
//!
//! Pure and allocation-free: every step consumes at least two bytes, so
//! decoding a table of `n` bytes takes at most `n / 2` steps, and
//! malformed input (truncation, over-long varints, pc overflow) is an error,
//! never a panic.

/// What is wrong with a pc-value table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PcValueError {
    #[error("the table ends in the middle of a pair")]
    Truncated,
    #[error("a varint is longer than 32 bits")]
    VarintOverflow,
    #[error("the program counter overflows")]
    PcOverflow,
}

/// One run of the table: `value` holds for `start <= pc < end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcRange {
    pub start: u64,
    pub end: u64,
    pub value: i32,
}

/// The runs of a table, in pc order; ends after the last run or at the
/// first error.
#[derive(Debug, Clone)]
pub struct PcValueIter<'a> {
    data: &'a [u8],
    entry: u64,
    pc: u64,
    value: i32,
    quantum: u32,
    done: bool,
}

impl<'a> PcValueIter<'a> {
    /// The table starting at `data[0]` of a function entered at `entry`,
    /// with instruction quantum `quantum` (minLC: 1 on x86, 4 on arm64).
    pub fn new(data: &'a [u8], entry: u64, quantum: u8) -> Self {
        PcValueIter {
            data,
            entry,
            pc: entry,
            value: -1,
            quantum: u32::from(quantum),
            done: false,
        }
    }

    fn step(&mut self) -> Result<Option<PcRange>, PcValueError> {
        let Some(&b) = self.data.first() else {
            return Err(PcValueError::Truncated);
        };
        // Go: `if uvdelta == 0 && !first` with `first = pc == entry`.
        if b == 0 && self.pc != self.entry {
            return Ok(None);
        }
        let (uvdelta, n) = uvarint32(self.data)?;
        self.data = self.data.get(n..).ok_or(PcValueError::Truncated)?;
        let delta = (uvdelta >> 1) as i32 ^ -((uvdelta & 1) as i32);
        self.value = self.value.wrapping_add(delta);
        let (pcdelta, n) = uvarint32(self.data)?;
        self.data = self.data.get(n..).ok_or(PcValueError::Truncated)?;
        let start = self.pc;
        let end = u64::from(pcdelta)
            .checked_mul(u64::from(self.quantum))
            .and_then(|d| start.checked_add(d))
            .ok_or(PcValueError::PcOverflow)?;
        self.pc = end;
        Ok(Some(PcRange {
            start,
            end,
            value: self.value,
        }))
    }
}

impl Iterator for PcValueIter<'_> {
    type Item = Result<PcRange, PcValueError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.step();
        if !matches!(r, Ok(Some(_))) {
            self.done = true;
        }
        r.transpose()
    }
}

/// The value of the table at `target`, as `runtime.pcvalue` computes it:
/// the value of the first run that ends after `target` (a pc before the
/// entry gets the first run's value, as in Go). `Ok(None)` when the table
/// ends before reaching `target` (Go's -1, "not found").
pub fn pc_value(
    table: &[u8],
    entry: u64,
    quantum: u8,
    target: u64,
) -> Result<Option<i32>, PcValueError> {
    for run in PcValueIter::new(table, entry, quantum) {
        let run = run?;
        if target < run.end {
            return Ok(Some(run.value));
        }
    }
    Ok(None)
}

/// Go's `readvarint`: a little-endian base-128 `uint32`. Returns the value
/// and the bytes used.
fn uvarint32(d: &[u8]) -> Result<(u32, usize), PcValueError> {
    let mut v: u32 = 0;
    for (i, &b) in d.iter().enumerate().take(5) {
        let low = u32::from(b & 0x7f);
        if i == 4 && low > 0x0f {
            return Err(PcValueError::VarintOverflow);
        }
        v |= low << (7 * i);
        if b & 0x80 == 0 {
            return Ok((v, i + 1));
        }
    }
    if d.len() >= 5 {
        Err(PcValueError::VarintOverflow)
    } else {
        Err(PcValueError::Truncated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes (value, length in quanta) runs as the Go linker does.
    fn encode(runs: &[(i32, u32)]) -> Vec<u8> {
        fn put(out: &mut Vec<u8>, mut v: u32) {
            while v >= 0x80 {
                out.push((v as u8) | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
        }
        let mut out = Vec::new();
        let mut prev = -1i32;
        for &(value, len) in runs {
            let d = value.wrapping_sub(prev);
            put(&mut out, ((d << 1) ^ (d >> 31)) as u32);
            put(&mut out, len);
            prev = value;
        }
        out.push(0);
        out
    }

    #[test]
    fn decodes_runs() {
        let t = encode(&[(10, 4), (10_000, 300), (-5, 1), (-5, 2)]);
        let runs: Vec<_> = PcValueIter::new(&t, 0x1000, 1)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            runs,
            vec![
                PcRange {
                    start: 0x1000,
                    end: 0x1004,
                    value: 10
                },
                PcRange {
                    start: 0x1004,
                    end: 0x1130,
                    value: 10_000
                },
                PcRange {
                    start: 0x1130,
                    end: 0x1131,
                    value: -5
                },
                // A zero value delta after the first pair ends the table.
            ]
        );
        assert_eq!(pc_value(&t, 0x1000, 1, 0x1000), Ok(Some(10)));
        assert_eq!(pc_value(&t, 0x1000, 1, 0x1003), Ok(Some(10)));
        assert_eq!(pc_value(&t, 0x1000, 1, 0x1004), Ok(Some(10_000)));
        assert_eq!(pc_value(&t, 0x1000, 1, 0x1130), Ok(Some(-5)));
        assert_eq!(pc_value(&t, 0x1000, 1, 0x1131), Ok(None));
        // Quantum 4 (arm64).
        assert_eq!(pc_value(&t, 0, 4, 15), Ok(Some(10)));
        assert_eq!(pc_value(&t, 0, 4, 16), Ok(Some(10_000)));
    }

    #[test]
    fn zero_first_delta_is_not_the_end() {
        // Value -1 + 0 for 8 bytes (e.g. pcdata "not inlined"), then 3.
        let t = encode(&[(-1, 8), (3, 2)]);
        assert_eq!(t[0], 0);
        assert_eq!(pc_value(&t, 0, 1, 0), Ok(Some(-1)));
        assert_eq!(pc_value(&t, 0, 1, 9), Ok(Some(3)));
        // A pc delta of 0 keeps `first` true (Go compares pc with entry).
        let t = [0u8, 0, 0, 2, 0];
        assert_eq!(pc_value(&t, 0, 1, 1), Ok(Some(-1)));
    }

    #[test]
    fn malformed_tables() {
        assert_eq!(pc_value(&[], 0, 1, 0), Err(PcValueError::Truncated));
        assert_eq!(pc_value(&[2], 0, 1, 0), Err(PcValueError::Truncated));
        assert_eq!(pc_value(&[2, 0x80], 0, 1, 0), Err(PcValueError::Truncated));
        assert_eq!(
            pc_value(&[0xff, 0xff, 0xff, 0xff, 0xff, 1], 0, 1, 0),
            Err(PcValueError::VarintOverflow)
        );
        assert_eq!(
            pc_value(
                &[2, 0xff, 0xff, 0xff, 0xff, 0x0f],
                u64::MAX - 5,
                4,
                u64::MAX
            ),
            Err(PcValueError::PcOverflow)
        );
        // Largest 32-bit varint is fine.
        assert_eq!(
            uvarint32(&[0xff, 0xff, 0xff, 0xff, 0x0f]),
            Ok((u32::MAX, 5))
        );
        // Every prefix of a valid table: an error or a value, never a panic.
        let t = encode(&[(1, 200), (70_000, 3), (2, 1)]);
        for n in 0..t.len() {
            for target in [0, 199, 200, 203, 204] {
                let _ = pc_value(&t[..n], 0, 1, target);
            }
        }
    }
}

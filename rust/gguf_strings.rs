//! GGUF string arrays (a vocabulary, its merges) read straight from the file's bytes: each string's place, and the strings.
//!
//! A GGUF string is a little-endian u64 byte length and that many bytes. A Llama 3 header
//! holds about 400,000 of them; walking them here, instead of building a Python string for
//! each, is most of what reading that header costs.

/// Where a walk over an array ran out of bytes: the offset it stood at and the bytes it needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated {
    pub at: usize,
    pub needed: usize,
}

/// The payload start of each of `count` strings from `start` in `data`, and the offset just
/// past the last one.
pub fn string_starts(
    data: &[u8],
    start: usize,
    count: usize,
) -> Result<(Vec<u64>, usize), Truncated> {
    let mut starts = Vec::with_capacity(count.min(data.len() / 8 + 1));
    let mut pos = start;
    for _ in 0..count {
        let length = read_length(data, pos)?;
        pos += 8;
        if length > data.len().saturating_sub(pos) {
            return Err(Truncated {
                at: pos,
                needed: length,
            });
        }
        starts.push(pos as u64);
        pos += length;
    }
    Ok((starts, pos))
}

/// The `count` strings packed in `data` (lengths and bytes, as in the file), invalid UTF-8
/// replaced by U+FFFD as Python's `errors="replace"` does.
pub fn strings(data: &[u8], count: usize) -> Result<Vec<String>, Truncated> {
    let (starts, _) = string_starts(data, 0, count)?;
    Ok(starts
        .iter()
        .map(|&s| {
            let s = s as usize;
            let length = read_length(data, s - 8).unwrap_or(0);
            String::from_utf8_lossy(&data[s..s + length]).into_owned()
        })
        .collect())
}

fn read_length(data: &[u8], pos: usize) -> Result<usize, Truncated> {
    let bytes = data
        .get(pos..pos.saturating_add(8))
        .ok_or(Truncated { at: pos, needed: 8 })?;
    let length = u64::from_le_bytes(bytes.try_into().expect("eight bytes"));
    usize::try_from(length).map_err(|_| Truncated {
        at: pos + 8,
        needed: usize::MAX,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(items: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for item in items {
            out.extend_from_slice(&(item.len() as u64).to_le_bytes());
            out.extend_from_slice(item);
        }
        out
    }

    #[test]
    fn walks_and_decodes() {
        let data = pack(&[b"a", b"", "\u{120}b".as_bytes(), b"\xff\xfe"]);
        let (starts, end) = string_starts(&data, 0, 4).unwrap();
        assert_eq!(starts, vec![8, 17, 25, 36]);
        assert_eq!(end, data.len());
        assert_eq!(
            strings(&data, 4).unwrap(),
            vec!["a", "", "\u{120}b", "\u{fffd}\u{fffd}"]
        );
    }

    #[test]
    fn reports_where_it_ran_out() {
        let mut data = pack(&[b"abc", b"defg"]);
        data.truncate(data.len() - 1);
        assert_eq!(
            string_starts(&data, 0, 2),
            Err(Truncated { at: 19, needed: 4 })
        );
        assert_eq!(string_starts(&data, 0, 3).unwrap_err().at, 19);
        assert_eq!(
            string_starts(&data[..5], 0, 1),
            Err(Truncated { at: 0, needed: 8 })
        );
        let huge = u64::MAX.to_le_bytes();
        assert_eq!(string_starts(&huge, 0, 1).unwrap_err().at, 8);
    }
}

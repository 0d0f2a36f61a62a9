//! lz-string's `decompressFromBase64`, as PostHog's older browser library
//! sends bodies with `?compression=lz64`. Written from the format (an LZW
//! variant over UTF-16 code units, packed into base64 characters of 6 bits),
//! with the output bounded: a dictionary entry is its parent entry plus one
//! code unit, so memory is linear in the input and the output, and the output
//! stops at the configured cap.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Why a body did not decompress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LzError {
    BadCharacter(char),
    Corrupt,
    TooLarge,
    NotUtf16,
}

impl std::fmt::Display for LzError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LzError::BadCharacter(c) => write!(f, "`{c}` is not a base64 character"),
            LzError::Corrupt => write!(f, "the lz-string data is corrupt"),
            LzError::TooLarge => write!(f, "it decompresses beyond the limit"),
            LzError::NotUtf16 => write!(f, "it does not decompress to text"),
        }
    }
}

struct Bits {
    values: Vec<u8>,
    at: usize,
    val: u32,
    position: u32,
}

impl Bits {
    fn read(&mut self, n: u32) -> u32 {
        let mut bits = 0;
        for i in 0..n {
            let bit = u32::from(self.val & self.position != 0);
            self.position >>= 1;
            if self.position == 0 {
                self.position = 32;
                self.val = self.values.get(self.at).copied().map_or(0, u32::from);
                self.at += 1;
            }
            bits |= bit << i;
        }
        bits
    }
}

#[derive(Clone, Copy)]
struct Entry {
    /// The entry this one extends, or `u32::MAX` for a single code unit.
    parent: u32,
    last: u16,
    first: u16,
    len: u32,
}

/// Decompresses lz-string base64 text into a string of at most `max` UTF-16
/// code units (an empty input gives an empty string, as lz-string does).
pub fn decompress_from_base64(input: &str, max: usize) -> Result<String, LzError> {
    // `=` (padding) reads as zero bits, as in lz-string.
    let values = input
        .chars()
        .map(|c| {
            if c == '=' {
                return Ok(0);
            }
            u8::try_from(c)
                .ok()
                .and_then(|b| ALPHABET.iter().position(|a| *a == b))
                .map(|p| p as u8)
                .ok_or(LzError::BadCharacter(c))
        })
        .collect::<Result<Vec<u8>, _>>()?;
    if values.is_empty() {
        return Ok(String::new());
    }
    let length = values.len();
    let mut bits = Bits {
        val: u32::from(values[0]),
        values,
        at: 1,
        position: 32,
    };
    // Codes 0-2 are the markers (8-bit literal, 16-bit literal, end).
    let mut dict: Vec<Entry> = vec![
        Entry {
            parent: u32::MAX,
            last: 0,
            first: 0,
            len: 0
        };
        3
    ];
    let literal = |dict: &mut Vec<Entry>, unit: u16| {
        dict.push(Entry {
            parent: u32::MAX,
            last: unit,
            first: unit,
            len: 1,
        });
        (dict.len() - 1) as u32
    };
    let mut out: Vec<u16> = Vec::new();
    let emit = |dict: &[Entry], code: u32, out: &mut Vec<u16>| -> Result<(), LzError> {
        let e = dict[code as usize];
        if out.len() + e.len as usize > max {
            return Err(LzError::TooLarge);
        }
        let start = out.len();
        out.resize(start + e.len as usize, 0);
        let (mut c, mut i) = (code, start + e.len as usize);
        while c != u32::MAX {
            let e = dict[c as usize];
            i -= 1;
            out[i] = e.last;
            c = e.parent;
        }
        Ok(())
    };
    let first = match bits.read(2) {
        0 => bits.read(8) as u16,
        1 => bits.read(16) as u16,
        _ => return Ok(String::new()),
    };
    let mut w = literal(&mut dict, first);
    emit(&dict, w, &mut out)?;
    // lz-string's `dictSize` is `dict.len()` (three markers and the first literal).
    let (mut enlarge_in, mut num_bits) = (4u64, 3u32);
    // One entry fewer before the codes widen by a bit.
    let spend = |enlarge_in: &mut u64, num_bits: &mut u32| -> Result<(), LzError> {
        *enlarge_in = enlarge_in.saturating_sub(1);
        if *enlarge_in == 0 {
            *enlarge_in = 1 << *num_bits;
            *num_bits += 1;
            if *num_bits > 31 {
                return Err(LzError::Corrupt);
            }
        }
        Ok(())
    };
    loop {
        if bits.at > length {
            return Err(LzError::Corrupt);
        }
        let mut c = bits.read(num_bits);
        match c {
            0 | 1 => {
                let unit = bits.read(if c == 0 { 8 } else { 16 }) as u16;
                c = literal(&mut dict, unit);
                spend(&mut enlarge_in, &mut num_bits)?;
            }
            2 => return String::from_utf16(&out).map_err(|_| LzError::NotUtf16),
            _ => {}
        }
        // The next entry is w plus the first unit of the entry `c` names; a
        // code one past the dictionary names that very entry (w + w[0]).
        let size = dict.len() as u32;
        let we = dict[w as usize];
        let next_first = match c {
            c if c < size => dict[c as usize].first,
            c if c == size => we.first,
            _ => return Err(LzError::Corrupt),
        };
        dict.push(Entry {
            parent: w,
            last: next_first,
            first: we.first,
            len: we.len + 1,
        });
        emit(&dict, c, &mut out)?;
        spend(&mut enlarge_in, &mut num_bits)?;
        w = c;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_outputs_of_the_javascript_library() {
        // LZString.compressToBase64 of "hello world", "aaaaaaaaaa" and "" (lz-string 1.5.0).
        assert_eq!(
            decompress_from_base64("BYUwNmD2AEDukCcwBMg=", 100).as_deref(),
            Ok("hello world")
        );
        assert_eq!(
            decompress_from_base64("IY1o", 100).as_deref(),
            Ok("aaaaaaaaaa")
        );
        assert_eq!(decompress_from_base64("Q===", 100).as_deref(), Ok(""));
        assert_eq!(decompress_from_base64("", 100).as_deref(), Ok(""));
        assert_eq!(decompress_from_base64("IY1o", 5), Err(LzError::TooLarge));
        assert_eq!(
            decompress_from_base64("BYUwNmD2", 100),
            Err(LzError::Corrupt),
            "truncated"
        );
        assert!(matches!(
            decompress_from_base64("@@@@", 100),
            Err(LzError::BadCharacter('@'))
        ));
    }
}

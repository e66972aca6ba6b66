//! Invoice numbers as compact arrangement keys.
//!
//! The per-invoice sums are the arrangement with the most keys (one per invoice ever seen).
//! Invoice numbers nearly always have the form `[C]digits`; those are packed into a `u64`,
//! which is stored in 8 bytes instead of 24 and compared as an integer. Any other number
//! keeps its text. Packing is exact and reversible, so results never depend on it.

use super::Text;

/// Flag bit for the cancellation prefix `C`.
const CANCELLED: u64 = 1 << 63;
/// At most 18 digits fit below the flag bit.
const MAX_DIGITS: usize = 18;

/// `[C]digits` (1 to 18 ASCII digits, no leading zero unless the number is `0`) packed into a
/// `u64`; `None` for any other text.
pub fn pack(invoice: &str) -> Option<u64> {
    let (flag, digits) = match invoice.strip_prefix('C') {
        Some(rest) => (CANCELLED, rest),
        None => (0, invoice),
    };
    let bytes = digits.as_bytes();
    let well_formed = !bytes.is_empty()
        && bytes.len() <= MAX_DIGITS
        && bytes.iter().all(u8::is_ascii_digit)
        && (bytes[0] != b'0' || bytes.len() == 1);
    if !well_formed {
        return None;
    }
    let number = bytes.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(flag | number)
}

/// The text of a packed invoice number.
pub fn unpack(packed: u64) -> Text {
    let prefix = if packed & CANCELLED != 0 { "C" } else { "" };
    compact_str::format_compact!("{prefix}{}", packed & !CANCELLED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usual_numbers_round_trip() {
        for text in ["536365", "C536379", "0", "C0", "1", "999999999999999999"] {
            let packed = pack(text).unwrap_or_else(|| panic!("{text} packs"));
            assert_eq!(unpack(packed), text);
        }
        assert_ne!(pack("536365"), pack("C536365"));
    }

    #[test]
    fn anything_else_keeps_its_text() {
        for text in [
            "",
            "C",
            "A563185",
            "0536365",
            "C0536365",
            "1000000000000000000",
            "53636 5",
            "+5",
            "CC5",
            "5C",
            "٥٣٦",
        ] {
            assert_eq!(pack(text), None, "{text:?}");
        }
    }
}

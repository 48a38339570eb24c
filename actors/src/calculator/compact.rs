//! Compact forms of what the windows keep per row: the row id, and the symbol and unit strings
//! shared through an intern table, so a window entry owns no heap memory of its own and parsing
//! a row allocates nothing for strings the table already holds.

use std::cmp::Ordering;
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

/// A row id whose order is the order of its text: the windows order rows by
/// `(event time, row id)`, and that order must not depend on how the id is stored.
///
/// marketlane's row ids are lowercase hyphenated UUIDs (`protocol::row_id`): those are kept as
/// their 16 bytes, inline. Any other text (the schema allows any string) is kept boxed.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RowId(Repr);

/// Invariant: `Other` never holds a canonical UUID, so equal texts have equal forms and the
/// derived equality is the equality of the texts.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    Uuid([u8; 16]),
    Other(Box<str>),
}

const UUID_LEN: usize = uuid::fmt::Hyphenated::LENGTH;

impl RowId {
    pub fn new(text: &str) -> Self {
        match decode_uuid(text.as_bytes()) {
            Some(bytes) => Self(Repr::Uuid(bytes)),
            None => Self(Repr::Other(text.into())),
        }
    }

    /// The smallest id (the empty text): a lower bound for ranges. Allocates nothing.
    pub fn min() -> Self {
        Self(Repr::Other(Box::default()))
    }
}

/// The 16 bytes of a lowercase hyphenated UUID; `None` for any other text (upper case too:
/// it would not print back the same; at 36 bytes `uuid` accepts only the hyphenated form).
fn decode_uuid(s: &[u8]) -> Option<[u8; 16]> {
    if s.len() != UUID_LEN || s.iter().any(u8::is_ascii_uppercase) {
        return None;
    }
    uuid::Uuid::try_parse_ascii(s)
        .ok()
        .map(uuid::Uuid::into_bytes)
}

fn encode_uuid(bytes: &[u8; 16]) -> [u8; UUID_LEN] {
    let mut out = [0u8; UUID_LEN];
    uuid::Uuid::from_bytes(*bytes)
        .hyphenated()
        .encode_lower(&mut out);
    out
}

impl Ord for RowId {
    fn cmp(&self, other: &Self) -> Ordering {
        match (&self.0, &other.0) {
            // Fixed length, hyphens at the same places and hex digits in ascending byte order:
            // the bytes compare as the texts do.
            (Repr::Uuid(a), Repr::Uuid(b)) => a.cmp(b),
            (Repr::Other(a), Repr::Other(b)) => a.cmp(b),
            (Repr::Uuid(a), Repr::Other(b)) => encode_uuid(a).as_slice().cmp(b.as_bytes()),
            (Repr::Other(a), Repr::Uuid(b)) => a.as_bytes().cmp(encode_uuid(b).as_slice()),
        }
    }
}

impl PartialOrd for RowId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for RowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Uuid(b) => {
                let text = encode_uuid(b);
                // Only ASCII hex digits and hyphens were written.
                f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
            }
            Repr::Other(s) => f.write_str(s),
        }
    }
}

impl fmt::Debug for RowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

impl From<&str> for RowId {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl From<String> for RowId {
    fn from(s: String) -> Self {
        Self::new(&s)
    }
}

/// Shares one `Arc<str>` per distinct symbol or unit among the rows of one consumer.
///
/// Bounded: past `capacity` distinct strings the table starts over. Rows already handed out
/// keep their `Arc`s, so this only costs sharing (a flood of distinct symbols allocates per
/// row as before), never correctness or unbounded memory.
pub struct Interner {
    /// FNV-1a: three lookups per row on short strings, where SipHash costs more than the
    /// allocation it saves; the strings come from our own topics and the table is bounded.
    strings: HashSet<Arc<str>, fnv::FnvBuildHasher>,
    capacity: usize,
}

impl Interner {
    /// Symbols are a few thousand per topic, units a handful.
    pub const DEFAULT_CAPACITY: usize = 65_536;

    pub fn new(capacity: usize) -> Self {
        Self {
            strings: HashSet::default(),
            capacity,
        }
    }

    pub fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.strings.get(s) {
            return shared.clone();
        }
        if self.strings.len() >= self.capacity {
            self.strings.clear();
        }
        let shared: Arc<str> = Arc::from(s);
        self.strings.insert(shared.clone());
        shared
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.strings.len()
    }
}

impl Default for Interner {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0f8e2c1a-5b3d-5e7f-9a1b-c2d3e4f5a6b7";

    #[test]
    fn a_uuid_is_kept_inline_and_prints_back_the_same() {
        let id = RowId::new(A);
        assert!(matches!(id.0, Repr::Uuid(_)));
        assert_eq!(id.to_string(), A);
        for other in [
            "0F8E2C1A-5B3D-5E7F-9A1B-C2D3E4F5A6B7",
            "0f8e2c1a5b3d5e7f9a1bc2d3e4f5a6b7abcd",
            "0f8e2c1a-5b3d-5e7f-9a1b-c2d3e4f5a6bg",
            "golden-a1",
            "",
        ] {
            let id = RowId::new(other);
            assert!(matches!(id.0, Repr::Other(_)), "{other}");
            assert_eq!(id.to_string(), other);
        }
    }

    /// The order of the ids is the order of their texts, whatever their forms.
    #[test]
    fn ids_order_as_their_texts() {
        let mut rng = crate::test_rng::XorShift(0x5eed);
        let mut texts: Vec<String> = vec![
            String::new(),
            "-".into(),
            "0".into(),
            "0f8e2c1a".into(),
            A.into(),
            format!("{A}x"),
            A[..35].into(),
            "0f8e2c1a-5b3d-5e7f-9a1b-c2d3e4f5a6b7".to_uppercase(),
            "zzz".into(),
            "golden-a1".into(),
        ];
        for _ in 0..200 {
            let n = rng.next();
            let m = rng.next();
            let hex = format!("{n:016x}{m:016x}");
            texts.push(format!(
                "{}-{}-{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..32]
            ));
            // A text sharing a UUID's prefix, then leaving the UUID alphabet.
            let cut = rng.below(36) as usize;
            texts.push(format!(
                "{}{}",
                &texts[texts.len() - 1][..cut],
                rng.pick(&["~", "#", "g", "0"])
            ));
        }
        for a in &texts {
            for b in &texts {
                let (x, y) = (RowId::new(a), RowId::new(b));
                assert_eq!(x.cmp(&y), a.cmp(b), "{a} vs {b}");
                assert_eq!(x == y, a == b, "{a} vs {b}");
            }
        }
        assert!(texts.iter().all(|t| RowId::min() <= RowId::new(t)));
    }

    #[test]
    fn the_intern_table_shares_and_stays_bounded() {
        let mut table = Interner::new(3);
        let a = table.intern("AAPL");
        assert!(Arc::ptr_eq(&a, &table.intern("AAPL")));
        for s in ["B", "C", "D", "E"] {
            table.intern(s);
        }
        assert!(table.len() <= 3);
        assert_eq!(&*table.intern("AAPL"), "AAPL");
    }
}

//! RowBinary primitives. A category row has one encoder, [`crate::wire_row::encode_json_row`]
//! (payload straight to bytes, the writer's path); [`encode_row_binary`] feeds it a row map.

use crate::row::{RowError, RowMap, STATE_MISSING, STATE_OK};
use crate::schema::CategorySchema;

fn put_leb128(buf: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            buf.push(byte);
            return;
        }
        buf.push(byte | 0x80);
    }
}

pub(crate) fn put_string(buf: &mut Vec<u8>, s: &str) {
    put_leb128(buf, s.len() as u64);
    buf.extend_from_slice(s.as_bytes());
}

/// Appends one row map to `buf` in RowBinary, in the column order of
/// [`super::insert_statement`], through the one row encoder: the map is checked as its JSON
/// would be (`validate_json`'s errors). On error `buf` is left as it was.
pub fn encode_row_binary(
    schema: &CategorySchema,
    row: &RowMap,
    buf: &mut Vec<u8>,
) -> Result<(), RowError> {
    let payload = serde_json::to_vec(row).map_err(|e| RowError::NotJson(e.to_string()))?;
    crate::wire_row::encode_json_row(schema, &payload, buf).map(|_| ())
}

/// The RowBinary code of a `<field>_state` value (the column is an `Enum8`).
pub(crate) fn state_code(state: &str) -> Option<u8> {
    match state {
        STATE_OK => Some(1),
        STATE_MISSING => Some(2),
        _ => None,
    }
}

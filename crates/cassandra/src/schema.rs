//! Schema agreement behind the proxy.
//!
//! After DDL a driver waits until every node reports the same `schema_version`, comparing
//! `system.local` with `system.peers`. Behind the proxy the driver sees no peers (they are
//! hidden so that it never connects past the proxy), so its own wait would end at once and the
//! next statement could reach a node that does not know the new table yet. The proxy therefore
//! holds a RESULT of kind SCHEMA_CHANGE until the upstream's nodes agree, using the pieces here:
//! [`is_schema_change`] to spot the result, [`query_frame`] to ask, and
//! [`schema_versions`] to read the answers.
//!
//! ```text
//! QUERY   [long string query][short consistency][flags: byte (v3/v4) | int (v5)]
//! RESULT  [int kind = 2 Rows] <metadata> [int rows_count] rows × [bytes]   (kind 5: SCHEMA_CHANGE)
//! ```

use bytes::{BufMut, Bytes, BytesMut};

use crate::{
    error::CqlError,
    frame::{BodyCompression, Frame, opcode},
    result,
    topology::response_prefix_len,
    wire::Reader,
};

/// RESULT kind of a schema change.
pub(crate) const KIND_SCHEMA_CHANGE: i32 = 5;
/// RESULT kind of rows.
const KIND_ROWS: i32 = 2;
/// Consistency ONE.
const CONSISTENCY_ONE: u16 = 0x0001;

/// True when `frame` answers a request with RESULT SCHEMA_CHANGE (a DDL statement's result).
/// A compressed body is decompressed only if it announces at most `max` bytes.
pub fn is_schema_change(frame: &Frame, compression: BodyCompression, max: usize) -> bool {
    let h = &frame.header;
    if !h.response || h.opcode != opcode::RESULT || h.stream < 0 {
        return false;
    }
    let Ok(body) = frame.plain_body(compression, max) else {
        return false;
    };
    let Ok(prefix) = response_prefix_len(&body, h.flags) else {
        return false;
    };
    let mut r = Reader::new(&body[prefix..], "RESULT body");
    matches!(r.int(), Ok(KIND_SCHEMA_CHANGE))
}

/// A QUERY request at consistency ONE with no values.
pub fn query_frame(version: u8, stream: i16, cql: &str) -> Frame {
    let mut body = BytesMut::with_capacity(cql.len() + 16);
    body.put_i32(cql.len() as i32);
    body.put_slice(cql.as_bytes());
    body.put_u16(CONSISTENCY_ONE);
    if version >= 5 {
        body.put_i32(0);
    } else {
        body.put_u8(0);
    }
    Frame::new(version, false, 0, stream, opcode::QUERY, body.freeze())
}

/// The non-null values of the first column of a Rows RESULT (e.g. `schema_version`s).
pub fn schema_versions(frame: &Frame) -> Result<Vec<Bytes>, CqlError> {
    let h = &frame.header;
    if h.opcode != opcode::RESULT {
        let (code, message) =
            crate::messages::parse_error(&frame.body).unwrap_or((0, "not a RESULT".to_owned()));
        return Err(CqlError::malformed(
            "schema version query",
            format!("{code:#06x} {message}"),
        ));
    }
    let prefix = response_prefix_len(&frame.body, h.flags)?;
    let mut r = Reader::new(&frame.body[prefix..], "schema version rows");
    if r.int()? != KIND_ROWS {
        return Err(CqlError::malformed(
            "schema version query",
            "not Rows".to_owned(),
        ));
    }
    let meta = result::read_rows_metadata(&mut r)?;
    let rows = r.int()?;
    let mut out = Vec::new();
    // Rows of no columns carry no bytes (and no version): a huge count must not mean a loop.
    let rows = if meta.columns_count == 0 {
        0
    } else {
        rows.max(0)
    };
    for _ in 0..rows {
        for col in 0..meta.columns_count {
            let v = r.bytes()?;
            if col == 0
                && let Some(v) = v
            {
                out.push(Bytes::copy_from_slice(v));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;

    #[test]
    fn query_frame_layout() {
        let f = query_frame(4, 7, "SELECT 1");
        assert_eq!(f.header.opcode, opcode::QUERY);
        assert_eq!(&f.body[..4], &[0, 0, 0, 8]);
        assert_eq!(&f.body[12..], &[0, 1, 0]);
        let f5 = query_frame(5, 7, "SELECT 1");
        assert_eq!(&f5.body[12..], &[0, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn schema_change_results_are_recognised() {
        let mut body = BytesMut::new();
        body.put_i32(5);
        wire::put_string(&mut body, "CREATED");
        let f = Frame::new(4, true, 0, 3, opcode::RESULT, body.freeze());
        assert!(is_schema_change(&f, BodyCompression::None, 1024));
        let mut rows = BytesMut::new();
        rows.put_i32(1); // void
        let f = Frame::new(4, true, 0, 3, opcode::RESULT, rows.freeze());
        assert!(!is_schema_change(&f, BodyCompression::None, 1024));
    }

    #[test]
    fn rows_of_no_columns_have_no_versions_whatever_their_count() {
        // 2^31 - 1 rows of no columns: nothing to read, answered at once (not a loop).
        let mut body = BytesMut::new();
        body.put_i32(2); // Rows
        body.put_i32(0x0001);
        body.put_i32(0);
        wire::put_string(&mut body, "system");
        wire::put_string(&mut body, "peers");
        body.put_i32(i32::MAX);
        let f = Frame::new(4, true, 0, 1, opcode::RESULT, body.freeze());
        assert!(schema_versions(&f).unwrap().is_empty());
    }

    #[test]
    fn reads_versions_from_rows() {
        let mut body = BytesMut::new();
        body.put_i32(2); // Rows
        body.put_i32(0x0001); // global table spec
        body.put_i32(1); // one column
        wire::put_string(&mut body, "system");
        wire::put_string(&mut body, "peers");
        wire::put_string(&mut body, "schema_version");
        body.put_u16(0x000C); // uuid
        body.put_i32(3);
        for v in [Some([1u8; 16]), None, Some([2u8; 16])] {
            match v {
                Some(v) => {
                    body.put_i32(16);
                    body.put_slice(&v);
                }
                None => body.put_i32(-1),
            }
        }
        let f = Frame::new(4, true, 0, 1, opcode::RESULT, body.freeze());
        let versions = schema_versions(&f).unwrap();
        assert_eq!(versions.len(), 2);
        assert_ne!(versions[0], versions[1]);
    }
}

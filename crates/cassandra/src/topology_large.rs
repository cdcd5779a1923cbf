//! Which large frames the rewriter must see whole.
//!
//! A frame longer than one read (a big INSERT, a page of rows) is relayed as its bytes arrive
//! unless the proxy has to read it: the relay asks once, with the header and the first bytes of
//! the body as they are on the wire. A frame must be held whole when it may be a system-table
//! request or its RESULT, an EVENT, or a SCHEMA_CHANGE RESULT (held for schema agreement), or
//! when the first bytes cannot tell (a compressed request, a custom payload longer than them).

use super::{
    MAX_CLASSIFIED_QUERY_LEN, Pending, TopologyRewriter, classify_query, response_prefix_len,
};
use crate::error::CqlError;
use crate::frame::{FrameHeader, flags, opcode};
use crate::schema::KIND_SCHEMA_CHANGE;
use crate::wire::Reader;

impl TopologyRewriter {
    /// A large client frame with this header and these first body bytes: true if it must be
    /// decoded whole (then [`TopologyRewriter::on_client_frame`] sees it as usual). False: it
    /// is relayed as it arrives and the rewriter forgets anything pending on its stream.
    pub fn request_needs_whole(&mut self, header: &FrameHeader, prefix: &[u8]) -> bool {
        if header.response {
            return false;
        }
        let tracked = match header.opcode {
            opcode::QUERY | opcode::PREPARE | opcode::EXECUTE => {
                if header.flags & flags::COMPRESSION != 0 {
                    return true;
                }
                match self.classify_prefix(header, prefix) {
                    Ok(tracked) => tracked,
                    Err(_) => return true,
                }
            }
            _ => None,
        };
        if tracked.is_some() {
            return true;
        }
        self.pending.remove(&header.stream);
        false
    }

    /// A large upstream frame with this header and these first body bytes: true if it must be
    /// decoded whole (then [`TopologyRewriter::on_upstream_frame`] sees it).
    pub fn response_needs_whole(&self, header: &FrameHeader, prefix: &[u8]) -> bool {
        if header.opcode == opcode::EVENT {
            return true;
        }
        if header.stream < 0 {
            return false;
        }
        if self.pending.contains_key(&header.stream) {
            return true;
        }
        if header.opcode != opcode::RESULT || header.flags & flags::COMPRESSION != 0 {
            // A SCHEMA_CHANGE result is a few names long: a compressed RESULT this large is not
            // one.
            return false;
        }
        let kind = response_prefix_len(prefix, header.flags)
            .and_then(|n| Reader::new(&prefix[n..], "RESULT body").int());
        !matches!(kind, Ok(k) if k != KIND_SCHEMA_CHANGE)
    }

    /// [`TopologyRewriter::on_client_frame`]'s classification on the first bytes of the body.
    fn classify_prefix(
        &self,
        header: &FrameHeader,
        prefix: &[u8],
    ) -> Result<Option<Pending>, CqlError> {
        let mut r = Reader::new(prefix, "request body");
        if header.flags & flags::CUSTOM_PAYLOAD != 0 {
            r.skip_bytes_map()?;
        }
        if header.opcode == opcode::EXECUTE {
            let id = r.short_bytes()?;
            return Ok(self
                .prepared
                .get(id)
                .map(|p| Pending::Execute(p.table, bytes::Bytes::copy_from_slice(id))));
        }
        let n = Reader::new(&prefix[r.position()..], "query").int()?;
        if usize::try_from(n).map_or(true, |n| n > MAX_CLASSIFIED_QUERY_LEN) {
            return Ok(None);
        }
        let query = r.long_string()?;
        Ok(
            classify_query(query).map(if header.opcode == opcode::QUERY {
                Pending::Query
            } else {
                Pending::Prepare
            }),
        )
    }
}

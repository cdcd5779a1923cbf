//! A bounds-checked reader for RESULT metadata (spec v4 §4.2.5.2, §4.2.5.4; v5 adds metadata
//! ids).
//!
//! cassandra-protocol's parsers slice and allocate by the announced lengths without checking
//! them first, which may panic on a truncated body; the relay path therefore walks the
//! metadata with this reader and uses cassandra-protocol only in tests, to build and check
//! results.
//!
//! ```text
//! Rows metadata:     [int flags][int columns_count][bytes paging_state]?(0x0002)
//!                    — 0x0004 NO_METADATA: nothing more —
//!                    [short bytes new_metadata_id]?(0x0008, v5)
//!                    [string ks][string table]?(0x0001 GLOBAL_TABLES_SPEC)
//!                    columns_count × ([string ks][string table]?(no global) [string name][option type])
//! Prepared:          [short bytes id][short bytes result_metadata_id]?(v5)
//!                    [int flags][int columns_count][int pk_count](v4+) pk_count × [short]
//!                    [string ks][string table]?(0x0001) columns … <rows metadata>
//! option type:       [short id] + custom 0x0000 [string] | list 0x20 / set 0x22 <type> |
//!                    map 0x21 <type><type> | udt 0x30 [string ks][string name][short n] n × ([string]<type>) |
//!                    tuple 0x31 [short n] n × <type>
//! ```

use crate::error::CqlError;
use crate::wire::Reader;

/// Type ids used by the rewriter.
pub(crate) mod type_id {
    pub const ASCII: u16 = 0x0001;
    pub const INT: u16 = 0x0009;
    pub const UUID: u16 = 0x000C;
    pub const VARCHAR: u16 = 0x000D;
    pub const TIMEUUID: u16 = 0x000F;
    pub const INET: u16 = 0x0010;
    pub const SET: u16 = 0x0022;
}

const MAX_TYPE_DEPTH: usize = 32;

/// A column type: its id and, for collections, tuples and UDTs, the element types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ColumnType {
    pub id: u16,
    pub elements: Vec<ColumnType>,
}

/// A column's name and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Column {
    pub name: String,
    pub ty: ColumnType,
}

/// What the rewriter needs from a Rows result's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RowsMetadata {
    pub no_metadata: bool,
    pub columns_count: usize,
    /// Empty with NO_METADATA.
    pub columns: Vec<Column>,
}

fn read_type(r: &mut Reader<'_>, depth: usize) -> Result<ColumnType, CqlError> {
    if depth > MAX_TYPE_DEPTH {
        return Err(CqlError::malformed("column type", "nested too deeply"));
    }
    let id = r.short()?;
    let mut elements = Vec::new();
    match id {
        0x0000 => {
            r.string()?;
        }
        0x0020 | 0x0022 => elements.push(read_type(r, depth + 1)?),
        0x0021 => {
            elements.push(read_type(r, depth + 1)?);
            elements.push(read_type(r, depth + 1)?);
        }
        0x0030 => {
            r.string()?;
            r.string()?;
            let n = r.short()?;
            for _ in 0..n {
                r.string()?;
                elements.push(read_type(r, depth + 1)?);
            }
        }
        0x0031 => {
            let n = r.short()?;
            for _ in 0..n {
                elements.push(read_type(r, depth + 1)?);
            }
        }
        _ => {}
    }
    Ok(ColumnType { id, elements })
}

fn read_columns(r: &mut Reader<'_>, count: usize, global: bool) -> Result<Vec<Column>, CqlError> {
    let mut columns = Vec::new();
    for _ in 0..count {
        if !global {
            r.string()?;
            r.string()?;
        }
        let name = r.string()?.to_owned();
        let ty = read_type(r, 0)?;
        columns.push(Column { name, ty });
    }
    Ok(columns)
}

fn count(r: &mut Reader<'_>, what: &'static str) -> Result<usize, CqlError> {
    let n = r.int()?;
    usize::try_from(n).map_err(|_| CqlError::malformed(what, format!("negative count {n}")))
}

/// Reads Rows metadata; the reader is left at `rows_count`.
pub(crate) fn read_rows_metadata(r: &mut Reader<'_>) -> Result<RowsMetadata, CqlError> {
    let flags = r.int()?;
    let columns_count = count(r, "rows metadata")?;
    if flags & 0x0002 != 0 {
        r.bytes()?;
    }
    if flags & 0x0004 != 0 {
        return Ok(RowsMetadata {
            no_metadata: true,
            columns_count,
            columns: Vec::new(),
        });
    }
    if flags & 0x0008 != 0 {
        r.short_bytes()?;
    }
    let global = flags & 0x0001 != 0;
    if global {
        r.string()?;
        r.string()?;
    }
    let columns = read_columns(r, columns_count, global)?;
    Ok(RowsMetadata {
        no_metadata: false,
        columns_count,
        columns,
    })
}

/// Reads a Prepared result (after its kind): the statement id and the result columns.
pub(crate) fn read_prepared(
    r: &mut Reader<'_>,
    version: u8,
) -> Result<(Vec<u8>, Vec<Column>), CqlError> {
    let id = r.short_bytes()?.to_vec();
    if version >= 5 {
        r.short_bytes()?;
    }
    let flags = r.int()?;
    let columns_count = count(r, "prepared metadata")?;
    if version >= 4 {
        let pk_count = count(r, "prepared metadata")?;
        for _ in 0..pk_count {
            r.short()?;
        }
    }
    let global = flags & 0x0001 != 0;
    if global {
        r.string()?;
        r.string()?;
    }
    read_columns(r, columns_count, global)?;
    let result = read_rows_metadata(r)?;
    Ok((id, result.columns))
}

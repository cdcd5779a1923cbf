//! CQL bytes.

//! The CQL table (below).

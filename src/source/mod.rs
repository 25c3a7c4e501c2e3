//! Built-in sources: producers inside Herald that publish through [`crate::core::Core`] like the HTTP API does.
//!
//! `sql` polls database queries per subscribed channel and pushes what changed.

pub mod sql;

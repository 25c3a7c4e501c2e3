//! The service monitor: periodic HTTP/TCP/UDP/DNS checks whose results become live channel events.

pub mod check;

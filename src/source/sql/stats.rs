//! What the SQL sources count, over every source and channel (`crate::metrics` renders them): polls by result,
//! their durations, and the rows they fetched.

use crate::core::stats::{Counter, Histogram, SECONDS};

/// Polls whose query answered within its bounds (`herald_sql_polls_total{result="ok"}`).
pub static POLLS_OK: Counter = Counter::new();

/// Polls that failed: the database failed or timed out, the result was over `max_rows`, or the change could not
/// be published (`herald_sql_polls_total{result="error"}`).
pub static POLLS_FAILED: Counter = Counter::new();

/// Time of each poll's query, answered or not (`herald_sql_poll_duration_seconds`).
pub static POLL_SECONDS: Histogram = Histogram::new(&SECONDS);

/// Rows the polls' queries returned (`herald_sql_rows_total`).
pub static ROWS: Counter = Counter::new();

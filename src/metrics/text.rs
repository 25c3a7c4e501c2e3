//! The Prometheus text exposition format (version 0.0.4), written straight into a `String`.

use std::fmt::Write as _;

use crate::core::stats::HistogramSnapshot;

/// What a family is.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets, sum and count.
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Appends families to `out`.
pub struct Text<'a> {
    out: &'a mut String,
}

impl<'a> Text<'a> {
    /// A writer appending to `out`.
    pub fn new(out: &'a mut String) -> Self {
        Self { out }
    }

    /// Starts family `name` (its `# HELP` and `# TYPE` lines).
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let _ = writeln!(
            self.out,
            "# HELP {name} {help}\n# TYPE {name} {}",
            kind.name()
        );
        self
    }

    /// One sample of the current family.
    pub fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl std::fmt::Display,
    ) -> &mut Self {
        self.out.push_str(name);
        write_labels(self.out, labels, None);
        let _ = writeln!(self.out, " {value}");
        self
    }

    /// A family with one unlabelled sample.
    pub fn single(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        value: impl std::fmt::Display,
    ) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    /// The samples of one histogram of the current family (`_bucket`, `_sum`, `_count`).
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        h: &HistogramSnapshot,
    ) -> &mut Self {
        for (bound, count) in &h.buckets {
            let _ = write!(self.out, "{name}_bucket");
            write_labels(self.out, labels, Some(&format_float(*bound)));
            let _ = writeln!(self.out, " {count}");
        }
        let _ = write!(self.out, "{name}_bucket");
        write_labels(self.out, labels, Some("+Inf"));
        let _ = writeln!(self.out, " {}", h.count);
        let _ = write!(self.out, "{name}_sum");
        write_labels(self.out, labels, None);
        let _ = writeln!(self.out, " {}", format_float(h.sum));
        let _ = write!(self.out, "{name}_count");
        write_labels(self.out, labels, None);
        let _ = writeln!(self.out, " {}", h.count);
        self
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, "{k}=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

/// A float as Prometheus reads it, without a float's noise (`0.0001`, not `0.00010000000000000002`).
fn format_float(v: f64) -> String {
    let s = format!("{v:.9}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".into()
    } else {
        s.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_families_labels_and_histograms() {
        let mut out = String::new();
        let mut t = Text::new(&mut out);
        t.family("x_total", Kind::Counter, "Xs.")
            .sample("x_total", &[("code", "a\"b")], 3);
        t.family("d_seconds", Kind::Histogram, "Ds.").histogram(
            "d_seconds",
            &[],
            &HistogramSnapshot {
                buckets: vec![(0.0001, 1), (0.25, 2)],
                sum: 0.3,
                count: 3,
            },
        );
        assert_eq!(
            out,
            "# HELP x_total Xs.\n# TYPE x_total counter\nx_total{code=\"a\\\"b\"} 3\n\
             # HELP d_seconds Ds.\n# TYPE d_seconds histogram\n\
             d_seconds_bucket{le=\"0.0001\"} 1\nd_seconds_bucket{le=\"0.25\"} 2\nd_seconds_bucket{le=\"+Inf\"} 3\n\
             d_seconds_sum 0.3\nd_seconds_count 3\n"
        );
    }
}

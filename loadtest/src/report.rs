//! Output of a run: one JSON line (`--json`) and a human summary table, plus the validity
//! verdict every scenario gives (a run that saturated the generator measured the generator).

use serde::Serialize;

/// The result of a scenario, ready to print.
pub struct Report {
    /// The figures as one line of JSON, fields in the order of the scenario's struct.
    pub json: String,
    pub table: Table,
    pub valid: bool,
}

impl Report {
    pub fn new(figures: &impl Serialize, table: Table, valid: bool) -> Self {
        Report {
            json: serde_json::to_string(figures)
                .unwrap_or_else(|e| format!("{{\"error\":\"cannot serialize the report: {e}\"}}")),
            table,
            valid,
        }
    }
}

/// Reasons a run does not measure what it claims to.
#[derive(Debug, Default)]
pub struct Validity(Vec<String>);

impl Validity {
    /// Records `reason` when `failed`.
    pub fn check(&mut self, failed: bool, reason: impl FnOnce() -> String) {
        if failed {
            self.0.push(reason());
        }
    }

    pub fn is_valid(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_reasons(self) -> Vec<String> {
        self.0
    }
}

/// A two-column summary for humans.
#[derive(Debug, Default)]
pub struct Table(Vec<(String, String)>);

impl Table {
    pub fn row(&mut self, key: &str, value: impl std::fmt::Display) -> &mut Self {
        self.0.push((key.to_string(), value.to_string()));
        self
    }

    pub fn render(&self) -> String {
        let width = self.0.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in &self.0 {
            out.push_str(&format!("{k:<width$}  {v}\n"));
        }
        out
    }
}

/// Rounds to `digits` decimals (for readable JSON).
pub fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_values() {
        let mut t = Table::default();
        t.row("a", 1).row("longer", "x");
        assert_eq!(t.render(), "a       1\nlonger  x\n");
    }

    #[test]
    fn validity_collects_reasons() {
        let mut v = Validity::default();
        v.check(false, || "no".into());
        assert!(v.is_valid());
        v.check(true, || "yes".into());
        assert_eq!(v.into_reasons(), vec!["yes".to_string()]);
        assert_eq!(round(1.23456, 2), 1.23);
    }
}

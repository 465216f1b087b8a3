//! Results: one JSON object per line on stdout (for scripts), a human line on stderr.

use std::fs::File;
use std::io::Write;
use std::sync::Mutex;

use serde::Serialize;
use serde_json::Value;

use crate::Result;

/// One measured figure.
#[derive(Serialize, Debug, Clone)]
pub struct Figure {
    /// Which server this was measured against (`--label`).
    pub label: String,
    pub scenario: &'static str,
    /// Stable key, e.g. `send.rooms_1.c_32.msgs_per_s`.
    pub figure: String,
    pub value: f64,
    pub unit: &'static str,
    pub higher_is_better: bool,
    /// Scenario parameters and side counts (samples, errors, …).
    pub params: Value,
}

pub struct Reporter {
    label: String,
    out: Option<Mutex<File>>,
}

impl Reporter {
    pub fn new(label: &str, json_out: Option<&str>) -> Result<Self> {
        let out = match json_out {
            Some(path) => Some(Mutex::new(
                File::options().create(true).append(true).open(path)?,
            )),
            None => None,
        };
        Ok(Self {
            label: label.to_owned(),
            out,
        })
    }

    /// Prints a progress or summary line for humans (stderr).
    pub fn say(&self, text: &str) {
        eprintln!("[{}] {}", self.label, text);
    }

    pub fn figure(
        &self,
        scenario: &'static str,
        figure: &str,
        value: f64,
        unit: &'static str,
        higher_is_better: bool,
        params: Value,
    ) -> Result<()> {
        let f = Figure {
            label: self.label.clone(),
            scenario,
            figure: figure.to_owned(),
            value: (value * 1000.0).round() / 1000.0,
            unit,
            higher_is_better,
            params,
        };
        let line = serde_json::to_string(&f)?;
        println!("{line}");
        if let Some(out) = &self.out {
            let mut file = out.lock().map_err(|_| "report file lock poisoned")?;
            writeln!(file, "{line}")?;
        }
        Ok(())
    }
}

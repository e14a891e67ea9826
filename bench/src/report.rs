//! Results: a table for people, JSON for programs, and latency summaries.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// One scenario's figures, in the order they are printed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub figures: Vec<Figure>,
    /// What could not be measured and why (a gateway without the endpoint, errors seen).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: String,
}

impl Report {
    pub fn new(scenario: &str) -> Report {
        Report {
            scenario: scenario.into(),
            ..Report::default()
        }
    }

    pub fn add(&mut self, name: impl Into<String>, value: f64, unit: &str) -> &mut Self {
        self.figures.push(Figure {
            name: name.into(),
            value,
            unit: unit.into(),
        });
        self
    }

    pub fn note(&mut self, note: impl Into<String>) -> &mut Self {
        self.notes.push(note.into());
        self
    }

    /// The value of the figure called `name`, for tests.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.figures
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.value)
    }

    pub fn table(&self) -> String {
        let width = self.figures.iter().map(|f| f.name.len()).max().unwrap_or(0);
        let mut out = format!("== {} ==\n", self.scenario);
        for f in &self.figures {
            let value = if f.value.fract() == 0.0 && f.value.abs() < 1e15 {
                format!("{}", f.value as i64)
            } else if f.value.abs() >= 100.0 {
                format!("{:.0}", f.value)
            } else {
                format!("{:.3}", f.value)
            };
            out.push_str(&format!("  {:<width$}  {:>14} {}\n", f.name, value, f.unit));
        }
        for n in &self.notes {
            out.push_str(&format!("  note: {n}\n"));
        }
        out
    }
}

/// A latency histogram in microseconds, 1 µs to 1 hour, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let _ = h.record((d.as_micros() as u64).max(1));
}

/// p50, p99 and max of `h` in milliseconds, added as `<name> p50` etc.
pub fn add_latency(report: &mut Report, name: &str, h: &Histogram<u64>) {
    if h.is_empty() {
        report.note(format!("{name}: no samples"));
        return;
    }
    let ms = |us: u64| us as f64 / 1000.0;
    report.add(format!("{name} p50"), ms(h.value_at_quantile(0.50)), "ms");
    report.add(format!("{name} p99"), ms(h.value_at_quantile(0.99)), "ms");
    report.add(format!("{name} max"), ms(h.max()), "ms");
}

/// Prints `label: count unit` to stderr every two seconds until dropped, for long runs.
pub struct Progress {
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub fn start(label: &str, unit: &'static str, counter: Arc<AtomicU64>) -> Progress {
        let label = label.to_owned();
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!(
                    "[{label}] {:>6.1} s  {} {unit}",
                    started.elapsed().as_secs_f64(),
                    counter.load(Ordering::Relaxed)
                );
            }
        });
        Progress { task }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
    }
}

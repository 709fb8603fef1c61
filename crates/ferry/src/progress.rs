//! Progress for humans: a bar on a terminal, periodic log lines otherwise.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ferry_postgres::snapshot::TableProgress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;

/// A running progress display for the full load.
#[derive(Debug)]
pub struct LoadProgress {
    task: JoinHandle<()>,
    bar: ProgressBar,
}

impl LoadProgress {
    /// Starts showing progress of `tables` (name, estimated heap bytes, estimated rows).
    pub fn start(tables: Vec<(String, u64, i64)>, progress: Arc<Vec<TableProgress>>) -> Self {
        let total: u64 = tables.iter().map(|t| t.1).sum::<u64>().max(1);
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let bar = if tty {
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(4))
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{spinner} copying [{elapsed_precise}] [{bar:30}] {percent:>3}% {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        let b = bar.clone();
        let task = tokio::spawn(async move {
            let started = std::time::Instant::now();
            let mut last_log = started;
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let rows: u64 = progress.iter().map(|p| p.rows.load(Ordering::Relaxed)).sum();
                let bytes: u64 = progress.iter().map(|p| p.bytes.load(Ordering::Relaxed)).sum();
                let secs = started.elapsed().as_secs_f64().max(0.001);
                let active: Vec<&str> = tables
                    .iter()
                    .zip(progress.iter())
                    .filter(|(_, p)| {
                        p.started_ms.load(Ordering::Relaxed) > 0
                            && p.finished_ms.load(Ordering::Relaxed) < p.started_ms.load(Ordering::Relaxed)
                    })
                    .map(|(t, _)| t.0.as_str())
                    .take(3)
                    .collect();
                let msg = format!(
                    "{} rows, {:.0} MB, {:.0} rows/s {}",
                    rows,
                    bytes as f64 / 1e6,
                    rows as f64 / secs,
                    active.join(" ")
                );
                // COPY bytes run a little over heap bytes; keep the bar honest at 99% until done.
                b.set_position(bytes.min(total * 99 / 100));
                b.set_message(msg.clone());
                if !tty && last_log.elapsed() >= Duration::from_secs(10) {
                    tracing::info!("copy progress: {msg}");
                    last_log = std::time::Instant::now();
                }
            }
        });
        Self { task, bar }
    }

    /// Stops the display.
    pub fn finish(self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}

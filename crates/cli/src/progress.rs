//! A progress bar for runs, on standard error, only when it is a terminal: piped
//! or redirected output never sees it.

use apf_vm::Live;
use apf_vm::config::VmConfig;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

/// How far a run is, as a fraction of its work or of its duration.
#[derive(Debug)]
pub struct RunBar {
    bar: Option<ProgressBar>,
    work: Vec<u64>,
    duration_ms: Option<u64>,
}

impl RunBar {
    /// A bar for a run of `config` labelled `label` (hidden off a terminal).
    pub fn new(config: &VmConfig, label: &str) -> RunBar {
        let work: Vec<u64> = config.processes.iter().map(|p| p.work).collect();
        let duration_ms = config
            .duration
            .map(|d| u64::try_from(d.0.as_millis()).unwrap_or(u64::MAX));
        let bar = std::io::stderr().is_terminal().then(|| {
            let total = duration_ms.unwrap_or_else(|| work.iter().sum());
            let bar = ProgressBar::new(total.max(1));
            if let Ok(style) =
                ProgressStyle::with_template("{msg:>14} [{bar:40}] {percent:>3}% {elapsed:>4}")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(label.to_string());
            bar
        });
        RunBar {
            bar,
            work,
            duration_ms,
        }
    }

    /// Moves the bar to where the running VM `live` is.
    pub fn update(&self, live: &Live<'_>) {
        let Some(bar) = &self.bar else { return };
        let position = match self.duration_ms {
            Some(_) => u64::try_from(live.elapsed.as_millis()).unwrap_or(u64::MAX),
            None => {
                let Some(block) = live.boot_block() else {
                    return;
                };
                let progress: Vec<u64> = block.results.iter().map(|r| r.progress).collect();
                done_units(&self.work, &progress)
            }
        };
        bar.set_position(position);
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Units done towards the work asked for (processes that run until the end count
/// for nothing).
fn done_units(work: &[u64], progress: &[u64]) -> u64 {
    work.iter()
        .zip(progress)
        .filter(|&(&w, _)| w > 0)
        .map(|(&w, &p)| p.min(w))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_work_asked_for_counts() {
        assert_eq!(done_units(&[100, 0, 50], &[40, 9_999, 80]), 40 + 50);
    }
}

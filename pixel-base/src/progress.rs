//! Progress of long jobs (training, ablations, exports) as `tracing` events: libraries report,
//! the binary presents. `pixel-cli` turns these events into progress bars; without a
//! subscriber they cost a relaxed load each.
//!
//! Every event has target [`TARGET`], a `job` (an id that tells concurrent jobs apart, e.g. a
//! run folder), and a message saying what happened: `start` (with `kind`, `pos`, `len`),
//! `pos` (with `pos`), `note` (with `text`, shown next to the bar), `line` (with `text`, a line
//! for the terminal; also from work that is no job, through [`line`]), and `end` (with `done`:
//! finished, or stopped by an error).
use std::fmt::Display;

/// The target of progress events.
pub const TARGET: &str = "pixel::progress";

/// A job in progress; dropping it ends it (as stopped, unless [`Job::finish`] was called).
#[derive(Debug)]
pub struct Job {
    id: String,
    done: bool,
}

impl Job {
    /// A job of `kind` (`train`, `ablate`, `export`) with `len` steps, `pos` of them done.
    pub fn start(kind: &str, id: impl Display, pos: u64, len: u64) -> Job {
        let id = id.to_string();
        tracing::info!(target: TARGET, job = %id, kind, pos, len, "start");
        Job { id, done: false }
    }

    /// `pos` steps are done.
    pub fn set(&self, pos: u64) {
        tracing::info!(target: TARGET, job = %self.id, pos, "pos");
    }

    /// A short status shown with the job (`loss 1.234`).
    pub fn note(&self, text: &str) {
        tracing::info!(target: TARGET, job = %self.id, text, "note");
    }

    /// A line of results for the terminal, printed above the job's progress.
    pub fn line(&self, text: &str) {
        line(&self.id, text);
    }

    /// Ends the job as finished.
    pub fn finish(mut self) {
        self.done = true;
    }
}

/// A line for the terminal from `source` (a job's id, or what reports it when it is no job,
/// such as a dataset being opened).
pub fn line(source: impl Display, text: &str) {
    tracing::info!(target: TARGET, job = %source, text, "line");
}

impl Drop for Job {
    fn drop(&mut self) {
        tracing::info!(target: TARGET, job = %self.id, done = self.done, "end");
    }
}

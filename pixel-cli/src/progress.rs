//! The terminal's progress bars: the library reports its long jobs as `tracing` events
//! ([`pixel_base::progress`]), and this layer draws one bar per job (concurrent jobs, as an
//! ablation's runs, each get theirs) and prints their result lines above the bars.
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use pixel_base::progress::TARGET;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Draws the progress events of every job as bars.
pub struct ProgressBars {
    multi: MultiProgress,
    /// Open bars by job id, with the job's kind.
    bars: Arc<Mutex<HashMap<String, (String, ProgressBar)>>>,
}

/// Sends this process's progress events to bars on stderr (once; later calls keep the first).
pub fn install() {
    let layer = ProgressBars::new(MultiProgress::new());
    // Errs only when a subscriber is set already, which then stays.
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer));
}

impl ProgressBars {
    fn new(multi: MultiProgress) -> ProgressBars {
        ProgressBars {
            multi,
            bars: Arc::default(),
        }
    }

    fn start(&self, e: Fields) {
        let bar = self.multi.add(ProgressBar::new(e.len.unwrap_or(0)));
        bar.set_style(style(&e.kind));
        bar.set_prefix(e.kind.clone());
        bar.set_position(e.pos.unwrap_or(0));
        if let Ok(mut bars) = self.bars.lock() {
            bars.insert(e.job, (e.kind, bar));
        }
    }

    fn end(&self, e: Fields) {
        let Some((kind, bar)) = self.bars.lock().ok().and_then(|mut b| b.remove(&e.job)) else {
            return;
        };
        match (e.done, kind.as_str()) {
            // A finished run's bar stays, with its last loss.
            (true, "train") => bar.finish(),
            (true, _) => bar.finish_and_clear(),
            (false, _) => bar.abandon(),
        }
    }

    fn bar(&self, job: &str) -> Option<ProgressBar> {
        let bars = self.bars.lock().ok()?;
        bars.get(job).map(|(_, bar)| bar.clone())
    }
}

/// The bar's look for a job of `kind`.
fn style(kind: &str) -> ProgressStyle {
    let template = match kind {
        "train" => "{spinner} train [{elapsed_precise}] {bar:30} {pos}/{len} {msg} (eta {eta})",
        "export" => "{spinner} export [{elapsed_precise}] {bar:30} {pos}/{len} images (eta {eta})",
        _ => "{spinner} {prefix} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
    };
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

impl<S: Subscriber> Layer<S> for ProgressBars {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != TARGET {
            return;
        }
        let mut e = Fields::default();
        event.record(&mut e);
        match e.message.as_str() {
            "start" => self.start(e),
            "pos" => {
                if let (Some(bar), Some(pos)) = (self.bar(&e.job), e.pos) {
                    bar.set_position(pos);
                }
            }
            "note" => {
                if let Some(bar) = self.bar(&e.job) {
                    bar.set_message(e.text);
                }
            }
            // Printed even when the bars are hidden (stderr not a terminal).
            "line" => self.multi.suspend(|| eprintln!("{}", e.text)),
            "end" => self.end(e),
            _ => {}
        }
    }
}

/// The fields of one progress event.
#[derive(Debug, Default)]
struct Fields {
    message: String,
    job: String,
    kind: String,
    text: String,
    pos: Option<u64>,
    len: Option<u64>,
    done: bool,
}

impl Visit for Fields {
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "pos" => self.pos = Some(value),
            "len" => self.len = Some(value),
            _ => {}
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if field.name() == "done" {
            self.done = value;
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "kind" => self.kind = value.to_string(),
            "text" => self.text = value.to_string(),
            "job" => self.job = value.to_string(),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "job" => self.job = format!("{value:?}"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use indicatif::ProgressDrawTarget;
    use pixel_base::progress::Job;

    /// A job's events move its own bar: started at its position and length, advanced, and
    /// finished or abandoned when the job ends; a second job has a bar of its own.
    #[test]
    fn each_job_drives_its_own_bar_until_it_ends() {
        let layer =
            ProgressBars::new(MultiProgress::with_draw_target(ProgressDrawTarget::hidden()));
        let bars = Arc::clone(&layer.bars);
        let open = |job: &str| {
            let bars = bars.lock().unwrap_or_else(|e| e.into_inner());
            bars.get(job)
                .map(|(kind, bar)| (kind.clone(), bar.position(), bar.length(), bar.message()))
        };
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let train = Job::start("train", "runs/a", 2, 10);
            let export = Job::start("export", "runs/b", 0, 4);
            train.set(5);
            train.note("loss 1.000");
            export.set(1);
            assert_eq!(
                open("runs/a"),
                Some(("train".into(), 5, Some(10), "loss 1.000".into()))
            );
            assert_eq!(
                open("runs/b"),
                Some(("export".into(), 1, Some(4), String::new()))
            );
            train.finish();
            assert_eq!(open("runs/a"), None);
            drop(export);
            assert_eq!(open("runs/b"), None);
        });
    }
}

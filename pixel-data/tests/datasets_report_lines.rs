//! Opening dataset files reports what was skipped as progress lines (`pixel_base::progress`),
//! which the command line prints: the library itself writes nothing to the terminal.
use pixel_base::progress::TARGET;
use pixel_data::data_source::{export_shapes, DataSource};
use pixel_data::shapes_ln::{ShapesLn, ShapesLnConfig};
use std::sync::{Arc, Mutex};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// The `text` of every progress `line` event.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl<S: Subscriber> Layer<S> for Lines {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        #[derive(Default)]
        struct Fields {
            message: String,
            text: String,
        }
        impl Visit for Fields {
            fn record_str(&mut self, field: &Field, value: &str) {
                if field.name() == "text" {
                    self.text = value.to_string();
                }
            }
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.message = format!("{value:?}");
                }
            }
        }
        if event.metadata().target() != TARGET {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        if fields.message == "line" {
            self.0.lock().unwrap().push(fields.text);
        }
    }
}

#[test]
fn skipped_records_are_reported_as_progress_lines() {
    let dir = tempfile::tempdir().unwrap();
    let generator = ShapesLn::new(ShapesLnConfig::default(), 3).unwrap();
    let mut dataset = export_shapes(&generator, dir.path(), 4, 2).unwrap();
    dataset.max_skipped_fraction = 1.0;
    // A second narrative of the first image, with an empty caption: skipped.
    let path = &dataset.train.narratives;
    let mut text = std::fs::read_to_string(path).unwrap();
    let mut record: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    record["annotator_id"] = serde_json::json!(71);
    record["caption"] = serde_json::json!("");
    text.push_str(&format!("{record}\n"));
    std::fs::write(path, text).unwrap();

    let lines = Lines::default();
    let subscriber = tracing_subscriber::registry().with(lines.clone());
    let data = tracing::subscriber::with_default(subscriber, || {
        DataSource::new(&ShapesLnConfig::default(), 3, Some(&dataset)).unwrap()
    });
    let DataSource::Files(files) = data else {
        panic!("a file data source");
    };
    let summary = files.report().summary();
    assert!(
        summary.iter().any(|l| l.contains("skipped 1")),
        "{summary:?}"
    );
    assert_eq!(*lines.0.lock().unwrap(), summary);
}

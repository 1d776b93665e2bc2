//! [`scrape`]: reads a `/metrics` page with Prometheus's own text-format
//! parser (the `prometheus_client` package, from `.venv`), so a page the real
//! Prometheus could not ingest fails the test, and gives back its samples.

use std::process::Command;

use serde_json::Value;

use super::process::{output_with_stdin, venv_python};

/// Parses the page and prints every sample as JSON: [name, {labels}, value].
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        samples.append([sample.name, sample.labels, sample.value])
json.dump(samples, sys.stdout)
"#;

/// One sample: its name, its labels, its value.
type Sample = (String, Vec<(String, String)>, f64);

/// The samples of one scrape.
pub struct Scrape {
    samples: Vec<Sample>,
}

impl Scrape {
    /// The value of the sample with this name whose labels include `labels`,
    /// summed over the samples that match (0 when none does).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, sample_labels, _)| {
                n == name
                    && labels.iter().all(|(key, value)| {
                        sample_labels.iter().any(|(k, v)| k == key && v == value)
                    })
            })
            .map(|(_, _, value)| value)
            .sum()
    }

    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|(n, _, _)| n == name)
    }
}

/// GETs `url` (a `/metrics` page) and parses it.
pub async fn scrape(url: &str) -> Scrape {
    let response = reqwest::get(url).await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let page = response.text().await.unwrap();
    let mut command = Command::new(venv_python());
    command.args(["-c", PARSE]);
    let output = output_with_stdin(command, page.as_bytes());
    assert!(
        output.status.success(),
        "Prometheus's parser refused the page: {}\n{page}",
        String::from_utf8_lossy(&output.stderr)
    );
    let parsed: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    let samples = parsed
        .into_iter()
        .map(|sample| {
            let labels = sample[1]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            (
                sample[0].as_str().unwrap().to_owned(),
                labels,
                sample[2].as_f64().unwrap(),
            )
        })
        .collect();
    Scrape { samples }
}

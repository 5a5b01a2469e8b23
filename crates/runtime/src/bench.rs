//! Per-forward latency measurement and the `BENCHMARKS.md` table.

use crate::backend::Backend;
use crate::error::Result;
use crate::io::seeded_noise;
use ndarray::Array1;
use pixeldit_spec::{ModelKind, ModelMetadata};
use std::path::Path;
use std::time::Instant;

/// Latency statistics of one backend, in milliseconds.
#[derive(Debug, Clone)]
pub struct BenchStats {
    /// Timed runs.
    pub runs: usize,
    /// Median.
    pub median_ms: f64,
    /// Fastest run.
    pub min_ms: f64,
    /// Slowest run.
    pub max_ms: f64,
}

/// One forward of a fixed input on a backend.
type OneForward = Box<dyn FnMut(&mut dyn Backend) -> Result<()>>;

/// Times `runs` forwards of batch `batch` after `warmup` untimed ones. Inputs: x seeded noise; class-conditional
/// models t = 0.5 and classes 0, 1, ..; text-to-image models t = 500 (sigma 0.5 x 1000) and seeded noise as the
/// `[batch, max_length, embed_dim]` text embeddings.
pub fn bench_forward(
    backend: &mut dyn Backend,
    meta: &ModelMetadata,
    batch: usize,
    warmup: usize,
    runs: usize,
) -> Result<BenchStats> {
    let c = meta.config.in_channels;
    let x = seeded_noise(0, [batch, c, meta.height, meta.width]);
    let mut forward: OneForward = match &meta.config.text {
        Some(text) if meta.config.kind == ModelKind::T2i => {
            let t = Array1::from_elem(batch, 500.0f32);
            let emb = seeded_noise(1, [batch, text.max_length, text.embed_dim, 1])
                .into_shape_with_order((batch, text.max_length, text.embed_dim))
                .expect("same element count");
            Box::new(move |b| b.run_text(x.view(), t.view(), emb.view()).map(drop))
        }
        _ => {
            let t = Array1::from_elem(batch, 0.5f32);
            let classes = meta.config.num_classes.max(1);
            let y: Array1<i64> = (0..batch).map(|i| (i % classes) as i64).collect();
            Box::new(move |b| b.run(x.view(), t.view(), y.view()).map(drop))
        }
    };
    for _ in 0..warmup {
        forward(backend)?;
    }
    let mut ms = Vec::with_capacity(runs.max(1));
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        forward(backend)?;
        ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(stats(ms))
}

/// Median (mean of the two middle values for even counts), min and max.
pub fn stats(mut ms: Vec<f64>) -> BenchStats {
    ms.sort_by(f64::total_cmp);
    let n = ms.len();
    let median = if n % 2 == 1 {
        ms[n / 2]
    } else {
        (ms[n / 2 - 1] + ms[n / 2]) / 2.0
    };
    BenchStats {
        runs: n,
        median_ms: median,
        min_ms: ms[0],
        max_ms: ms[n - 1],
    }
}

/// `model name (N cores)` from `/proc/cpuinfo`.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count()
        .max(1);
    format!("{model} ({cores} cores)")
}

/// Today's UTC date, `YYYY-MM-DD`.
pub fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86400);
    civil_date(days as i64)
}

/// Days since 1970-01-01 to `YYYY-MM-DD` (proleptic Gregorian).
pub fn civil_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// One row of `BENCHMARKS.md`.
#[derive(Debug, Clone)]
pub struct BenchRow {
    /// `YYYY-MM-DD`.
    pub date: String,
    /// CPU / GPU description.
    pub machine: String,
    /// The command line.
    pub command: String,
    /// Model file, preset, size and attention lowering, e.g. `tiny.onnx (tiny 32x32, custom)`.
    pub model: String,
    /// Precision from the metadata.
    pub precision: String,
    /// `ort/CPUExecutionProvider`, `tract/tract-cpu`, ...
    pub backend: String,
    /// Batch size.
    pub batch: usize,
    /// Latencies.
    pub stats: BenchStats,
}

/// Header written when `BENCHMARKS.md` does not exist.
pub const HEADER: &str = "# Benchmarks\n\n\
Per-forward latency of exported PixelDiT models, one row per backend, appended by `pixeldit-run bench` \
(warm-up runs first, then median / min / max over the timed runs).\n\n\
| date | machine | command | model | precision | backend | batch | median ms | min ms | max ms |\n\
|---|---|---|---|---|---|---|---|---|---|\n";

impl BenchRow {
    /// The Markdown table line (with `|` in cells escaped).
    pub fn markdown(&self) -> String {
        let e = |s: &str| s.replace('|', "\\|");
        format!(
            "| {} | {} | `{}` | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} |",
            e(&self.date),
            e(&self.machine),
            e(&self.command),
            e(&self.model),
            e(&self.precision),
            e(&self.backend),
            self.batch,
            self.stats.median_ms,
            self.stats.min_ms,
            self.stats.max_ms
        )
    }
}

/// Appends rows to the table at `path`, creating it with [`HEADER`] if missing. Rows go out in one `O_APPEND`
/// write, so concurrent `bench` runs do not lose each other's rows.
pub fn append_rows(path: &Path, rows: &[BenchRow]) -> Result<()> {
    use std::io::Write;
    let io_err = |e| crate::RuntimeError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(mut f) => f.write_all(HEADER.as_bytes()).map_err(io_err)?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(e)),
    }
    let mut text = String::new();
    let existing = std::fs::read(path).map_err(io_err)?;
    if existing.last().is_some_and(|&b| b != b'\n') {
        text.push('\n');
    }
    for r in rows {
        text.push_str(&r.markdown());
        text.push('\n');
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io_err)?;
    f.write_all(text.as_bytes()).map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max() {
        let s = stats(vec![5.0, 1.0, 3.0]);
        assert_eq!((s.median_ms, s.min_ms, s.max_ms), (3.0, 1.0, 5.0));
        assert_eq!(stats(vec![4.0, 1.0, 3.0, 2.0]).median_ms, 2.5);
    }

    #[test]
    fn dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(19_723), "2024-01-01");
        assert_eq!(civil_date(20_513), "2026-03-01");
    }

    #[test]
    fn table_is_created_then_appended() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("BENCHMARKS.md");
        let row = BenchRow {
            date: "2026-01-01".into(),
            machine: "cpu (2 cores)".into(),
            command: "pixeldit-run bench a|b".into(),
            model: "m".into(),
            precision: "fp32".into(),
            backend: "tract".into(),
            batch: 1,
            stats: stats(vec![1.0]),
        };
        append_rows(&p, std::slice::from_ref(&row)).unwrap();
        append_rows(&p, &[row]).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("# Benchmarks"));
        assert_eq!(text.matches("| 2026-01-01 |").count(), 2);
        assert!(text.contains("a\\|b"));
    }
}

//! The `BENCHMARKS.md` table of `pixeldit-run bench --append FILE`: machine, date and one Markdown row per backend.

use anyhow::Result;
use pixeldit_runtime::bench::BenchStats;
use std::path::Path;

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

/// The table's column header.
pub const TABLE_HEAD: &str =
    "| date | machine | command | model | precision | backend | batch | median ms | min ms | max ms |\n\
|---|---|---|---|---|---|---|---|---|---|\n";

/// Introduction written when the table file does not exist (followed by [`TABLE_HEAD`]).
pub const INTRO: &str = "# Benchmarks\n\n\
Per-forward latency of exported PixelDiT models, one row per backend, appended by `pixeldit-run bench --append` \
(warm-up runs first, then median / min / max over the timed runs).\n\n";

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

/// Appends rows to the table at `path`, creating it with [`INTRO`] and [`TABLE_HEAD`] if missing. Rows go out in one `O_APPEND`
/// write, so concurrent `bench` runs do not lose each other's rows.
pub fn append_rows(path: &Path, rows: &[BenchRow]) -> Result<()> {
    use std::io::Write;
    let io_err = |e: std::io::Error| anyhow::Error::new(e).context(format!("writing {}", path.display()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(mut f) => f
            .write_all(format!("{INTRO}{TABLE_HEAD}").as_bytes())
            .map_err(io_err)?,
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
    use pixeldit_runtime::bench::stats;

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

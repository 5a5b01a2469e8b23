//! The released text-to-image model at 1024x1024 (`--preset t2i --random-init`, 1302.47M parameters, 5.2 GB of fp32
//! weights) exports within bounded memory with external data.
//!
//! Runs in every `cargo test` (the exporter and graph crates are optimized in test builds, see the workspace
//! `Cargo.toml`, so the 5.2 GB export takes under a minute); `tools/check_t2i_export.sh` adds the ONNX checker.
//! `PIXELDIT_T2I_PRECISION` picks fp32 (default) or fp16, `PIXELDIT_MEMORY_DIR` the directory. It skips, printing
//! why, when the disk or memory is short. Its own process, so `VmHWM` is the export's.

mod common;

use common::{free_disk_bytes, proc_kb};
use pixeldit_exporter::{export_to_file, ExportOptions, WeightsSpec};
use pixeldit_spec::{ModelConfig, Precision};

#[test]
fn t2i_1024_exports_within_memory() {
    let precision: Precision = std::env::var("PIXELDIT_T2I_PRECISION")
        .unwrap_or_else(|_| "fp32".into())
        .parse()
        .unwrap();
    let cfg = ModelConfig::preset("t2i").unwrap();
    let base = std::env::var_os("PIXELDIT_MEMORY_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let bytes_per = if precision == Precision::Fp32 { 4 } else { 2 };
    let params = pixeldit_exporter::model::parameter_count(&cfg).unwrap();
    let need = params as u64 * bytes_per + (512 << 20);
    match free_disk_bytes(&base) {
        Some(free) if free >= need => {}
        other => {
            eprintln!(
                "skipped: the t2i {precision} export needs {:.1} GB of disk in {}, free: {}",
                need as f64 / 1e9,
                base.display(),
                other.map_or("unknown".into(), |f| format!("{:.1} GB", f as f64 / 1e9))
            );
            return;
        }
    }
    if proc_kb("/proc/meminfo", "MemAvailable:").is_none_or(|kb| kb < 2 << 20) {
        eprintln!("skipped: less than 2 GB of memory available");
        return;
    }
    let dir = tempfile::tempdir_in(&base).unwrap();
    let out = dir.path().join("t2i.onnx");
    let mut opts = ExportOptions::new(cfg.clone(), WeightsSpec::RandomInit { seed: 0 });
    opts.precision = precision;
    assert_eq!((opts.height, opts.width), (1024, 1024));
    let t = std::time::Instant::now();
    let report = export_to_file(&opts, &out).unwrap();
    let hwm = proc_kb("/proc/self/status", "VmHWM:").unwrap_or(0);
    let w = &report.write;
    eprintln!(
        "t2i 1024x1024 {precision}: {} nodes, {:.2}M parameters, model {:.1} MB + external {:.2} GB in {:.1} s, \
         peak RSS (VmHWM) {:.0} MB",
        report.nodes,
        w.weight_params as f64 / 1e6,
        w.model_bytes as f64 / 1e6,
        w.external_bytes as f64 / 1e9,
        t.elapsed().as_secs_f64(),
        hwm as f64 / 1024.0
    );
    // The last MM-DiT block's text-side output is dead: 21.2M of the 1302.47M parameters are not exported.
    assert_eq!(w.weight_params + 21_236_736, params);
    let ext = w.external_path.as_ref().expect("external data past 512 MiB");
    assert_eq!(std::fs::metadata(ext).unwrap().len(), w.external_bytes);
    assert!(w.model_bytes < 8 << 20, "the model file holds the graph only");
    assert!(
        hwm * 1024 < 1 << 30,
        "peak RSS {hwm} kB for {:.2} GB of weights",
        w.external_bytes as f64 / 1e9
    );
}

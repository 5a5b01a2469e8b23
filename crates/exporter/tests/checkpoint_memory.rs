//! A Lightning checkpoint of official size converts with bounded memory: the test writes a `torch.save`-layout
//! archive (zip64, pickle protocol 2) for a preset, with the EMA copy, the non-EMA copy and two AdamW moments (4x the
//! parameters, 12.8 GB for XL-256 like `imagenet256_pixeldit_xl_epoch320.ckpt`), exports it in this process and
//! reads the peak resident set (`VmHWM`).
//!
//! Ignored by default (it writes GBs): run `tools/check_checkpoint_memory.sh` (release build) or
//! `cargo test --release -p pixeldit-exporter --test checkpoint_memory -- --ignored --nocapture`.
//! `PIXELDIT_MEMORY_PRESET` picks the preset (default `XL-256`), `PIXELDIT_MEMORY_DIR` the directory (default the
//! system temp dir). It skips, printing why, when the disk or memory is short. Its own process: `VmHWM` is not
//! shared with other tests.

mod common;

use common::{free_disk_bytes, proc_kb};
use pixeldit_exporter::{export_to_file, ExportOptions, Weights, WeightsSpec};
use pixeldit_spec::ModelConfig;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

/// CRC-32 (zip).
struct Crc([u32; 256], u32);
impl Crc {
    fn new() -> Self {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        Crc(t, !0)
    }
    fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.1 = self.0[((self.1 ^ u32::from(b)) & 0xff) as usize] ^ (self.1 >> 8);
        }
    }
    fn finish(&self) -> u32 {
        !self.1
    }
}

/// Deterministic, non-zero test value of element `i` of tensor `key`.
fn pattern(key: &str, i: usize) -> f32 {
    let h = key
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    ((h.wrapping_add(i as u64) % 1000) as f32) / 1000.0 - 0.5
}

/// A protocol-2 pickle writer for the few opcodes torch.save emits.
#[derive(Default)]
struct Pickle(Vec<u8>);
impl Pickle {
    fn op(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn str(&mut self, s: &str) {
        self.op(b"X");
        self.op(&(s.len() as u32).to_le_bytes());
        self.op(s.as_bytes());
    }
    fn int(&mut self, v: usize) {
        if v < 256 {
            self.op(&[b'K', v as u8]);
        } else if v < 65536 {
            self.op(b"M");
            self.op(&(v as u16).to_le_bytes());
        } else if v < (1 << 31) {
            self.op(b"J");
            self.op(&(v as i32).to_le_bytes());
        } else {
            self.op(&[0x8a, 8]);
            self.op(&(v as u64).to_le_bytes());
        }
    }
    fn global(&mut self, m: &str, n: &str) {
        self.op(format!("c{m}\n{n}\n").as_bytes());
    }
    fn ints(&mut self, v: &[usize]) {
        self.op(b"(");
        for x in v {
            self.int(*x);
        }
        self.op(b"t");
    }
    /// `_rebuild_tensor_v2(('storage', FloatStorage, key, 'cpu', numel), 0, shape, stride, False, OrderedDict())`
    fn tensor(&mut self, key: usize, shape: &[usize]) {
        let numel: usize = shape.iter().product();
        let mut strides = vec![1usize; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * shape[i + 1];
        }
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.op(b"((");
        self.str("storage");
        self.global("torch", "FloatStorage");
        self.str(&key.to_string());
        self.str("cpu");
        self.int(numel);
        self.op(b"tQ");
        self.int(0);
        self.ints(shape);
        self.ints(&strides);
        self.op(&[0x89]);
        self.global("collections", "OrderedDict");
        self.op(b")Rt");
        self.op(b"R");
    }
}

/// A STORED zip64 archive written record by record.
struct Zip {
    f: std::io::BufWriter<std::fs::File>,
    at: u64,
    central: Vec<u8>,
    count: u64,
}

impl Zip {
    fn record(&mut self, name: &str, len: u64, mut fill: impl FnMut(&mut dyn FnMut(&[u8]))) {
        let lho = self.at;
        let mut h = Vec::new();
        h.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        h.extend_from_slice(&[45, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // version, flags, method 0, time, date
        h.extend_from_slice(&0u32.to_le_bytes()); // crc, patched below
        h.extend_from_slice(&[0xff; 8]); // sizes in the zip64 extra field
        h.extend_from_slice(&(name.len() as u16).to_le_bytes());
        h.extend_from_slice(&20u16.to_le_bytes());
        h.extend_from_slice(name.as_bytes());
        h.extend_from_slice(&1u16.to_le_bytes());
        h.extend_from_slice(&16u16.to_le_bytes());
        h.extend_from_slice(&len.to_le_bytes());
        h.extend_from_slice(&len.to_le_bytes());
        self.f.write_all(&h).unwrap();
        let mut crc = Crc::new();
        let mut n = 0u64;
        let f = &mut self.f;
        fill(&mut |b: &[u8]| {
            crc.update(b);
            n += b.len() as u64;
            f.write_all(b).unwrap();
        });
        assert_eq!(n, len, "record {name}");
        let crc = crc.finish();
        self.f.seek(SeekFrom::Start(lho + 14)).unwrap();
        self.f.write_all(&crc.to_le_bytes()).unwrap();
        self.at = lho + h.len() as u64 + len;
        self.f.seek(SeekFrom::Start(self.at)).unwrap();
        let c = &mut self.central;
        c.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        c.extend_from_slice(&[45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        c.extend_from_slice(&crc.to_le_bytes());
        c.extend_from_slice(&[0xff; 8]);
        c.extend_from_slice(&(name.len() as u16).to_le_bytes());
        c.extend_from_slice(&28u16.to_le_bytes());
        c.extend_from_slice(&[0; 10]); // comment length, disk, internal and external attributes
        c.extend_from_slice(&0xffff_ffffu32.to_le_bytes());
        c.extend_from_slice(name.as_bytes());
        c.extend_from_slice(&1u16.to_le_bytes());
        c.extend_from_slice(&24u16.to_le_bytes());
        c.extend_from_slice(&len.to_le_bytes());
        c.extend_from_slice(&len.to_le_bytes());
        c.extend_from_slice(&lho.to_le_bytes());
        self.count += 1;
    }

    fn finish(mut self) {
        let (cd_at, cd_len) = (self.at, self.central.len() as u64);
        self.f.write_all(&self.central).unwrap();
        let rec = cd_at + cd_len;
        let mut e = Vec::new();
        e.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
        e.extend_from_slice(&44u64.to_le_bytes());
        e.extend_from_slice(&[45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        e.extend_from_slice(&self.count.to_le_bytes());
        e.extend_from_slice(&self.count.to_le_bytes());
        e.extend_from_slice(&cd_len.to_le_bytes());
        e.extend_from_slice(&cd_at.to_le_bytes());
        e.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
        e.extend_from_slice(&0u32.to_le_bytes());
        e.extend_from_slice(&rec.to_le_bytes());
        e.extend_from_slice(&1u32.to_le_bytes());
        e.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        e.extend_from_slice(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        e.extend_from_slice(&[0xff; 8]);
        e.extend_from_slice(&[0, 0]);
        self.f.write_all(&e).unwrap();
        self.f.flush().unwrap();
    }
}

/// Writes the Lightning layout: `state_dict` {denoiser.* (zeros), ema_denoiser.* (pattern)} and
/// `optimizer_states[0].state[i]` {exp_avg, exp_avg_sq} (zeros), each tensor its own storage record.
fn write_lightning(path: &Path, shapes: &[(String, Vec<usize>)]) {
    let mut p = Pickle::default();
    let mut records: Vec<(String, usize, bool)> = Vec::new(); // (key for the values, numel, pattern?)
    p.op(&[0x80, 2]);
    p.op(b"}(");
    p.str("state_dict");
    p.global("collections", "OrderedDict");
    p.op(b")R(");
    for (prefix, pat) in [("denoiser.", false), ("ema_denoiser.", true)] {
        for (k, s) in shapes {
            p.str(&format!("{prefix}{k}"));
            p.tensor(records.len(), s);
            records.push((k.clone(), s.iter().product(), pat));
        }
    }
    p.op(b"u");
    p.str("optimizer_states");
    p.op(b"]}(");
    p.str("state");
    p.op(b"}(");
    for (i, (k, s)) in shapes.iter().enumerate() {
        p.int(i);
        p.op(b"}(");
        for m in ["exp_avg", "exp_avg_sq"] {
            p.str(m);
            p.tensor(records.len(), s);
            records.push((k.clone(), s.iter().product(), false));
        }
        p.op(b"u");
    }
    p.op(b"uua");
    p.str("epoch");
    p.int(319);
    p.op(b"u.");

    let f = std::fs::File::create(path).unwrap();
    let mut z = Zip {
        f: std::io::BufWriter::with_capacity(1 << 20, f),
        at: 0,
        central: Vec::new(),
        count: 0,
    };
    z.record("archive/data.pkl", p.0.len() as u64, |w| w(&p.0));
    z.record("archive/byteorder", 6, |w| w(b"little"));
    let mut buf = Vec::with_capacity(1 << 20);
    for (i, (key, numel, pat)) in records.iter().enumerate() {
        z.record(&format!("archive/data/{i}"), (*numel * 4) as u64, |w| {
            let mut at = 0;
            while at < *numel {
                let n = (*numel - at).min(1 << 18);
                buf.clear();
                for j in at..at + n {
                    let v = if *pat { pattern(key, j) } else { 0.0 };
                    buf.extend_from_slice(&v.to_le_bytes());
                }
                w(&buf);
                at += n;
            }
        });
    }
    z.record("archive/version", 2, |w| w(b"3\n"));
    z.finish();
}

#[test]
#[ignore = "writes a multi-GB checkpoint (12.8 GB for XL-256); run tools/check_checkpoint_memory.sh"]
fn official_size_lightning_checkpoint_converts_with_bounded_memory() {
    let preset = std::env::var("PIXELDIT_MEMORY_PRESET").unwrap_or_else(|_| "XL-256".into());
    let cfg = ModelConfig::preset(&preset).unwrap();
    let base = std::env::var_os("PIXELDIT_MEMORY_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let shapes = pixeldit_exporter::model::parameter_shapes(&cfg).unwrap();
    let params = pixeldit_exporter::model::parameter_count(&cfg).unwrap() as u64;
    let (ckpt_bytes, onnx_bytes) = (16 * params, 4 * params);
    let need = ckpt_bytes + onnx_bytes + (1 << 30);
    match free_disk_bytes(&base) {
        Some(free) if free >= need => {}
        Some(free) => {
            eprintln!(
                "skipped: {} needs {:.1} GB of disk in {}, {:.1} GB free",
                preset,
                need as f64 / 1e9,
                base.display(),
                free as f64 / 1e9
            );
            return;
        }
        None => {
            eprintln!(
                "skipped: cannot read the free disk space of {} (df)",
                base.display()
            );
            return;
        }
    }
    if proc_kb("/proc/meminfo", "MemAvailable:").is_none_or(|kb| kb < 2 << 20) {
        eprintln!("skipped: less than 2 GB of memory available");
        return;
    }
    let dir = tempfile::tempdir_in(&base).unwrap();
    let ckpt = dir.path().join("official_layout.ckpt");
    let t0 = std::time::Instant::now();
    write_lightning(&ckpt, &shapes);
    let size = std::fs::metadata(&ckpt).unwrap().len();
    let hwm_before = proc_kb("/proc/self/status", "VmHWM:").unwrap_or(0);
    eprintln!(
        "{preset}: wrote {} ({:.2} GB, {} tensors x 4 copies) in {:.1} s; VmHWM so far {:.0} MB",
        ckpt.display(),
        size as f64 / 1e9,
        shapes.len(),
        t0.elapsed().as_secs_f64(),
        hwm_before as f64 / 1024.0
    );

    let t1 = std::time::Instant::now();
    let out = dir.path().join("model.onnx");
    let report = export_to_file(
        &ExportOptions::new(cfg.clone(), WeightsSpec::Checkpoint(ckpt.clone())),
        &out,
    )
    .unwrap();
    let hwm = proc_kb("/proc/self/status", "VmHWM:").unwrap_or(0);
    eprintln!(
        "{preset}: exported {:.2}M parameters ({:.2} GB external data) in {:.1} s, peak RSS (VmHWM) {:.0} MB for a \
         {:.2} GB checkpoint",
        report.write.weight_params as f64 / 1e6,
        report.write.external_bytes as f64 / 1e9,
        t1.elapsed().as_secs_f64(),
        hwm as f64 / 1024.0,
        size as f64 / 1e9
    );
    assert_eq!(report.write.weight_params as u64, params);
    assert!(size > 4 * params * 4, "the file holds 4 copies");
    assert_eq!(
        report.keys.dropped.len(),
        shapes.len(),
        "the non-EMA copy is dropped"
    );
    // Memory stays at a few tensors: far below the file and below one copy of the weights.
    let hwm_bytes = hwm * 1024;
    assert!(
        hwm_bytes < (1u64 << 30).max(params),
        "peak RSS {hwm_bytes} B for {params} parameters"
    );
    assert!(
        size < 1 << 30 || hwm_bytes * 8 < size,
        "peak RSS {hwm_bytes} B vs file {size} B"
    );
    // The EMA values were read (not the zero copies).
    let w = Weights::from_checkpoint(&ckpt).unwrap();
    for key in ["final_layer.linear.bias", "s_embedder.proj.bias"] {
        let v = w.source(key).unwrap().read().unwrap();
        assert!(v.iter().enumerate().all(|(i, x)| *x == pattern(key, i)), "{key}");
    }
}

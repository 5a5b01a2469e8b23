//! Models exported by `pixeldit-exporter` (added once the exporter lands).

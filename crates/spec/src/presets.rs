//! The embedded presets, one table per model family. Each row names a preset, holds its JSON (the canonical file is
//! `crates/spec/presets/NAME.json`, linked from the repository's `graphs/NAME.json` for users and scripts) and, for
//! models that ship trained weights, the weights file in `graphs/`.
//!
//! Adding a preset: put its JSON in `crates/spec/presets/`, link it from `graphs/`, and add one row here.

/// One embedded preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    /// The name (`--preset NAME`); equals the `name` field of the JSON.
    pub name: &'static str,
    /// Other names accepted for it (e.g. `XL` for `XL-256`).
    pub aliases: &'static [&'static str],
    /// The configuration JSON.
    pub json: &'static str,
    /// File name, in the repository's `graphs/`, of the trained weights the preset ships with (the default
    /// checkpoint of `pixeldit-export`), if any.
    pub weights: Option<&'static str>,
}

macro_rules! preset {
    ($name:literal $(, aliases = [$($alias:literal),*])? $(, weights = $weights:literal)?) => {
        Preset {
            name: $name,
            aliases: &[$($($alias),*)?],
            json: include_str!(concat!("../presets/", $name, ".json")),
            weights: preset!(@weights $($weights)?),
        }
    };
    (@weights) => { None };
    (@weights $w:literal) => { Some($w) };
}

/// The PixelDiT model presets ([`crate::ModelConfig::preset`]).
pub const PRESETS: &[Preset] = &[
    preset!("tiny"),
    preset!("digits", weights = "digits.safetensors"),
    preset!("digits-t2i", weights = "digits-t2i.safetensors"),
    preset!("B"),
    preset!("L"),
    preset!("XL-256", aliases = ["XL"]),
    preset!("XL-512"),
    preset!("t2i"),
    preset!("t2i-tiny"),
];

/// The Gemma-2 text encoder presets (Hugging Face `config.json` format, read by the exporter's `GemmaConfig`).
pub const TEXT_ENCODER_PRESETS: &[Preset] = &[preset!("gemma-2-2b"), preset!("gemma-tiny")];

impl Preset {
    /// The row of `table` named `name` or one of its aliases.
    pub fn find(table: &'static [Preset], name: &str) -> Option<&'static Preset> {
        table.iter().find(|p| p.name == name || p.aliases.contains(&name))
    }

    /// The names of `table`, with aliases as `ALIAS = NAME`, comma-separated (for error messages).
    pub fn list(table: &[Preset]) -> String {
        let names: Vec<&str> = table.iter().map(|p| p.name).collect();
        let aliases: Vec<String> = table
            .iter()
            .flat_map(|p| p.aliases.iter().map(move |a| format!("{a} = {}", p.name)))
            .collect();
        if aliases.is_empty() {
            names.join(", ")
        } else {
            format!("{} ({})", names.join(", "), aliases.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_listed() {
        for table in [PRESETS, TEXT_ENCODER_PRESETS] {
            for (i, p) in table.iter().enumerate() {
                assert!(table[..i]
                    .iter()
                    .all(|q| q.name != p.name && !q.aliases.contains(&p.name)));
                assert_eq!(Preset::find(table, p.name), Some(p));
            }
        }
        assert_eq!(Preset::find(PRESETS, "XL").unwrap().name, "XL-256");
        assert_eq!(
            Preset::list(PRESETS),
            "tiny, digits, digits-t2i, B, L, XL-256, XL-512, t2i, t2i-tiny (XL = XL-256)"
        );
    }
}

//! One image request as `model.py` forwards it (JSON), and the sampler settings it asks for.

use crate::{PipelineError, Result};
use pixeldit_runtime::generate::MAX_STEPS;
use pixeldit_runtime::patch_cache::{CachePolicy, Reuse, Schedule};
use pixeldit_runtime::{SamplerConfig, SamplerKind, SamplerOverrides};
use pixeldit_spec::ModelMetadata;
use serde::Deserialize;

/// One image request, as `model.py` forwards it (JSON; absent fields take the model's defaults). The float fields
/// take a number or one of the strings `"nan"`, `"inf"`, `"-inf"` (JSON has no non-finite numbers), so that such a
/// value reaches the range checks, which name it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Class label (class-conditional models), `0..num_classes`.
    pub class: Option<i64>,
    /// The prompt (text-to-image models), encoded by the official recipe.
    pub prompt: Option<String>,
    /// The negative prompt for CFG (text-to-image models) [default: ""].
    pub negative_prompt: Option<String>,
    /// Noise seed: the stream of `pixeldit-run --seed`.
    #[serde(default)]
    pub seed: u64,
    /// Position of the image in the seed's noise stream (`pixeldit-run --classes a,b,c` draws images 0, 1, 2 of
    /// one stream).
    #[serde(default)]
    pub index: u64,
    /// Sampler steps.
    pub steps: Option<i64>,
    /// CFG weight.
    #[serde(default, deserialize_with = "float::f32")]
    pub cfg: Option<f32>,
    /// `flow_dpm`, `euler`, `heun` or `dpmpp_2m`.
    pub sampler: Option<String>,
    /// Guidance interval `[lo, hi]`.
    #[serde(default, deserialize_with = "float::pair")]
    pub interval: Option<[f64; 2]>,
    /// Time shift.
    #[serde(default, deserialize_with = "float::f64")]
    pub shift: Option<f64>,
    /// Patch-level step cache: the whole model at one forward in N, the pixel level alone in between
    /// (`pixeldit-run --patch-cache N`).
    pub patch_cache: Option<i64>,
    /// Adaptive patch-level step cache (`pixeldit-run --patch-cache-threshold X`); not with `patch_cache`.
    #[serde(default, deserialize_with = "float::f64")]
    pub patch_cache_threshold: Option<f64>,
    /// What cached forwards use: `extrapolate` (default) or `hold` (`pixeldit-run --patch-cache-reuse`).
    pub patch_cache_reuse: Option<String>,
    /// Where `patch_cache`'s whole forwards go: `front` (default) or `uniform` (`pixeldit-run
    /// --patch-cache-schedule`).
    pub patch_cache_schedule: Option<String>,
    /// Image height in pixels (a dynamic-size model: a multiple of 16 in its range; a static one: its own size).
    pub height: Option<u64>,
    /// Image width in pixels (as `height`).
    pub width: Option<u64>,
}

/// The fields of a [`Request`], in declaration order.
pub const FIELDS: &[&str] = &[
    "class",
    "prompt",
    "negative_prompt",
    "seed",
    "index",
    "steps",
    "cfg",
    "sampler",
    "interval",
    "shift",
    "patch_cache",
    "patch_cache_threshold",
    "patch_cache_reuse",
    "patch_cache_schedule",
    "height",
    "width",
];

impl Request {
    /// Parses a request. Errors name the field in words ("field 'cfg': invalid type: string "x", expected a
    /// number"), never a position in the JSON text.
    pub fn from_json(text: &str) -> Result<Request> {
        let bad = |m: String| PipelineError::Request(m);
        let fields: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).map_err(|e| {
            bad(match e.classify() {
                serde_json::error::Category::Data => "the request is not a JSON object".into(),
                _ => "the request is not valid JSON".into(),
            })
        })?;
        // Each field on its own first, so that the error names it (serde's messages name only unknown fields).
        for (key, value) in &fields {
            if !FIELDS.contains(&key.as_str()) {
                return Err(bad(format!(
                    "unknown field '{key}' (expected one of {})",
                    FIELDS.join(", ")
                )));
            }
            let one: serde_json::Map<_, _> = [(key.clone(), value.clone())].into_iter().collect();
            Request::deserialize(serde_json::Value::Object(one))
                .map_err(|e| bad(format!("field '{key}': {e}")))?;
        }
        Request::deserialize(serde_json::Value::Object(fields)).map_err(|e| bad(e.to_string()))
    }
}

/// Deserializers for float fields that also accept `"nan"`, `"inf"`, `"+inf"`, `"-inf"` (and `"infinity"`,
/// any case).
mod float {
    use serde::de::{self, Deserialize, Deserializer, Visitor};

    /// A number, or a string naming a non-finite one.
    struct Number(f64);

    impl<'de> Deserialize<'de> for Number {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = Number;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a number (or \"nan\", \"inf\", \"-inf\")")
                }
                fn visit_f64<E: de::Error>(self, v: f64) -> Result<Number, E> {
                    Ok(Number(v))
                }
                fn visit_i64<E: de::Error>(self, v: i64) -> Result<Number, E> {
                    Ok(Number(v as f64))
                }
                fn visit_u64<E: de::Error>(self, v: u64) -> Result<Number, E> {
                    Ok(Number(v as f64))
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Number, E> {
                    match v.to_ascii_lowercase().as_str() {
                        "nan" | "+nan" | "-nan" => Ok(Number(f64::NAN)),
                        "inf" | "+inf" | "infinity" | "+infinity" => Ok(Number(f64::INFINITY)),
                        "-inf" | "-infinity" => Ok(Number(f64::NEG_INFINITY)),
                        _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                    }
                }
            }
            d.deserialize_any(V)
        }
    }

    /// An optional f32 (a JSON number is read as f64, then rounded to f32, as serde_json reads an `f32`).
    pub fn f32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f32>, D::Error> {
        Ok(Option::<Number>::deserialize(d)?.map(|n| n.0 as f32))
    }

    /// An optional f64.
    pub fn f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Ok(Option::<Number>::deserialize(d)?.map(|n| n.0))
    }

    /// An optional pair of f64.
    pub fn pair<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[f64; 2]>, D::Error> {
        Ok(Option::<[Number; 2]>::deserialize(d)?.map(|[a, b]| [a.0, b.0]))
    }
}

impl Request {
    /// The request's sampler fields as overrides of the model's defaults (the types only; ranges are checked by
    /// [`SamplerConfig::with_overrides`], the same checks as `pixeldit-run`'s).
    pub fn sampler_overrides(&self) -> Result<SamplerOverrides> {
        let steps = match self.steps {
            Some(n) if !(0..=MAX_STEPS as i64).contains(&n) => {
                return Err(PipelineError::Request(format!(
                    "steps {n}: expected a count of at most {MAX_STEPS}"
                )))
            }
            n => n.map(|n| n as usize),
        };
        let kind = match &self.sampler {
            Some(s) => Some(s.parse::<SamplerKind>().map_err(|_| {
                PipelineError::Request(format!("sampler '{s}': expected one of {}", SamplerKind::names()))
            })?),
            None => None,
        };
        Ok(SamplerOverrides {
            kind,
            steps,
            cfg_scale: self.cfg,
            interval: self.interval.map(|[lo, hi]| (lo, hi)),
            shift: self.shift,
        })
    }
}

impl Request {
    /// The request's patch cache, checked (`None`: uncached). The threshold, an FP32 input, arrives as the shortest
    /// decimal of that f32 (see `model.py`) and is read as f64, as `pixeldit-run` reads the same decimal.
    pub fn patch_cache(&self) -> Result<Option<(CachePolicy, Reuse)>> {
        let bad = |m: String| PipelineError::Request(m);
        if self.patch_cache_schedule.is_some() && self.patch_cache.is_none() {
            return Err(bad("patch_cache_schedule needs patch_cache".into()));
        }
        let policy = match (self.patch_cache, self.patch_cache_threshold) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "patch_cache and patch_cache_threshold exclude each other: send one".into(),
                ))
            }
            (Some(n), None) => {
                if n < 1 {
                    return Err(bad(format!(
                        "patch_cache {n}: expected N >= 1 (1 recomputes the patch level at every forward)"
                    )));
                }
                let schedule = match self.patch_cache_schedule.as_deref() {
                    None => Schedule::default(),
                    Some(s) => s
                        .parse()
                        .map_err(|e: pixeldit_runtime::RuntimeError| bad(e.to_string()))?,
                };
                Some(schedule.policy(usize::try_from(n).unwrap_or(usize::MAX)))
            }
            (None, Some(x)) => {
                if !(x.is_finite() && x > 0.0) {
                    return Err(bad(format!(
                        "patch_cache_threshold {x}: expected a finite number > 0"
                    )));
                }
                Some(CachePolicy::Threshold(x))
            }
            (None, None) => None,
        };
        let reuse = match self.patch_cache_reuse.as_deref() {
            None => Reuse::default(),
            Some("extrapolate") => Reuse::Extrapolate,
            Some("hold") => Reuse::Hold,
            Some(other) => {
                return Err(bad(format!(
                    "patch_cache_reuse '{other}': expected extrapolate or hold"
                )))
            }
        };
        match policy {
            Some(p) => Ok(Some((p, reuse))),
            None if self.patch_cache_reuse.is_some() => Err(bad(
                "patch_cache_reuse needs patch_cache or patch_cache_threshold".into(),
            )),
            None => Ok(None),
        }
    }
}

/// The sampler settings of a request: the model's defaults, then the request's fields (as `pixeldit-run` applies
/// its flags), checked by the runtime's one checker.
pub fn sampler_config(meta: &ModelMetadata, req: &Request) -> Result<SamplerConfig> {
    let defaults = SamplerConfig::from_metadata(&meta.sampler)?;
    Ok(defaults.with_overrides(&req.sampler_overrides()?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Request::from_json(text).unwrap_err().to_string()
    }

    #[test]
    fn non_finite_floats_arrive_as_strings() {
        let r = Request::from_json(r#"{"cfg": "nan", "shift": "-inf", "interval": [0.1, "inf"]}"#).unwrap();
        assert!(r.cfg.unwrap().is_nan());
        assert_eq!(r.shift, Some(f64::NEG_INFINITY));
        assert_eq!(r.interval, Some([0.1, f64::INFINITY]));
        let r = Request::from_json(r#"{"cfg": 4, "shift": 1.5, "interval": null}"#).unwrap();
        assert_eq!((r.cfg, r.shift, r.interval), (Some(4.0), Some(1.5), None));
    }

    /// A number reaches the same f32 as serde_json's own `f32` (the images must not change).
    #[test]
    fn floats_parse_as_serde_json_does() {
        for text in ["0.1", "4.0", "1e-7", "3.4028235e38", "0.30000001192092896"] {
            let r = Request::from_json(&format!(r#"{{"cfg": {text}}}"#)).unwrap();
            let want: f32 = serde_json::from_str(text).unwrap();
            assert_eq!(r.cfg.unwrap().to_bits(), want.to_bits(), "{text}");
        }
    }

    #[test]
    fn parse_errors_name_the_field_not_a_position() {
        for (text, want) in [
            (
                r#"{"cfg": "abc"}"#,
                "field 'cfg': invalid value: string \"abc\", expected a number",
            ),
            (
                r#"{"cfg": [1]}"#,
                "field 'cfg': invalid type: sequence, expected a number",
            ),
            (
                r#"{"class": "three"}"#,
                "field 'class': invalid type: string \"three\"",
            ),
            (r#"{"interval": [1]}"#, "field 'interval': invalid length 1"),
            (r#"{"seed": -1}"#, "field 'seed': invalid value: integer `-1`"),
            (r#"{"colour": 2}"#, "unknown field 'colour'"),
            (r#"{"cfg": NaN}"#, "the request is not valid JSON"),
            (r#"[1, 2]"#, "the request is not a JSON object"),
        ] {
            let msg = err(text);
            assert!(msg.contains(want), "{text}: '{msg}' lacks '{want}'");
            assert!(!msg.contains("line") && !msg.contains("column"), "{text}: {msg}");
        }
    }
}

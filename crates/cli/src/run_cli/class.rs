//! Class-conditional conditions: labels from `--class`/`--classes`.

use super::sample::Source;
use super::{SampleArgs, Target};
use anyhow::{bail, Result};
use pixeldit_runtime::Conditions;

/// The labels of the images (`--classes`, or `--class`, default 0, repeated `--batch` times), checked against the
/// model; text flags are refused.
pub(super) fn source(a: &SampleArgs, target: &Target) -> Result<Source> {
    if a.text_embeddings.is_some()
        || a.negative_embeddings.is_some()
        || a.prompt.is_some()
        || a.prompts_file.is_some()
        || a.negative_prompt.is_some()
        || a.text_encoder.is_some()
    {
        bail!(
            "prompts, text encoders and text embeddings are for text-to-image models; {} is class-conditional",
            target.name
        );
    }
    let labels: Vec<i64> = match (&a.classes, a.class) {
        (Some(list), _) => {
            if let Some(b) = a.batch.filter(|b| *b != list.len()) {
                bail!(
                    "--batch {b} does not match the {} labels of --classes",
                    list.len()
                );
            }
            list.clone()
        }
        (None, c) => vec![c.unwrap_or(0); a.batch.unwrap_or(1)],
    };
    Conditions::classes(labels.clone(), target.meta.config.null_class()).check(&target.meta.config)?;
    Ok(Source::Classes(labels))
}

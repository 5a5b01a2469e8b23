//! [`Conditions`]: what the images of one generation are conditioned on, for every model kind.

use crate::denoiser::{CondRows, Conditioning};
use crate::error::{Result, RuntimeError};
use ndarray::{concatenate, Array1, Array3, Axis};
use pixeldit_spec::{ModelConfig, ModelKind};

/// The conditions of K images: class labels (the null class is the CFG negative), or text embeddings with the
/// negative prompt's embeddings for CFG.
#[derive(Debug, Clone, PartialEq)]
pub enum Conditions {
    /// Class labels `0..num_classes`, one per image.
    Class {
        /// The labels.
        labels: Vec<i64>,
        /// The null class (the unconditional branch of CFG).
        null: i64,
    },
    /// Text embeddings `[K, L, E]`, and the negative's `[K, L, E]` (required when CFG applies).
    Text {
        /// The prompts' embeddings.
        cond: Array3<f32>,
        /// The negative prompts' embeddings.
        uncond: Option<Array3<f32>>,
    },
}

impl Conditions {
    /// Class labels for a model whose null class is `null` (its `num_classes`).
    pub fn classes(labels: Vec<i64>, null: i64) -> Self {
        Conditions::Class { labels, null }
    }

    /// Text embeddings with an optional negative.
    pub fn text(cond: Array3<f32>, uncond: Option<Array3<f32>>) -> Self {
        Conditions::Text { cond, uncond }
    }

    /// Number of images K.
    pub fn count(&self) -> usize {
        match self {
            Conditions::Class { labels, .. } => labels.len(),
            Conditions::Text { cond, .. } => cond.shape()[0],
        }
    }

    /// Class labels or text.
    pub fn conditioning(&self) -> Conditioning {
        match self {
            Conditions::Class { .. } => Conditioning::Class,
            Conditions::Text { .. } => Conditioning::Text,
        }
    }

    /// Whether there is a negative branch for CFG (always for classes: the null class).
    pub fn has_negative(&self) -> bool {
        match self {
            Conditions::Class { .. } => true,
            Conditions::Text { uncond, .. } => uncond.is_some(),
        }
    }

    /// Whether the negative branch runs at every forward when CFG is on, not only inside the guidance interval:
    /// true for classes (the official class-conditional sampler evaluates both halves at every step), false for
    /// text (the official text-to-image sampler runs the negative only where guidance applies).
    pub fn negative_at_every_forward(&self) -> bool {
        matches!(self, Conditions::Class { .. })
    }

    /// The class labels (empty for text).
    pub fn labels(&self) -> &[i64] {
        match self {
            Conditions::Class { labels, .. } => labels,
            Conditions::Text { .. } => &[],
        }
    }

    /// Checks the conditions against the model `config`: the kind, every label in `0..num_classes`, the text
    /// embeddings' `[L, E]` and the negative's shape.
    pub fn check(&self, config: &ModelConfig) -> Result<()> {
        match (self, config.kind) {
            (Conditions::Class { labels, .. }, ModelKind::C2i) => {
                let num_classes = config.num_classes;
                if let Some(&class) = labels.iter().find(|&&c| c < 0 || c >= num_classes as i64) {
                    return Err(RuntimeError::ClassOutOfRange { class, num_classes });
                }
                Ok(())
            }
            (Conditions::Text { cond, uncond }, ModelKind::T2i) => {
                if let Some(text) = &config.text {
                    let want = [text.max_length, text.embed_dim];
                    if cond.shape()[1..] != want {
                        return Err(RuntimeError::Shape(format!(
                            "text embeddings of shape {:?}, the model takes [K, {}, {}]",
                            cond.shape(),
                            want[0],
                            want[1]
                        )));
                    }
                }
                match uncond {
                    Some(u) if u.shape() != cond.shape() => Err(RuntimeError::Shape(format!(
                        "negative embeddings {:?} and prompt embeddings {:?} differ",
                        u.shape(),
                        cond.shape()
                    ))),
                    _ => Ok(()),
                }
            }
            (c, _) => Err(RuntimeError::InvalidArgument(format!(
                "{} is {}: it is not conditioned on {}",
                config.name,
                match config.kind {
                    ModelKind::C2i => "class-conditional",
                    ModelKind::T2i => "a text-to-image model",
                },
                c.conditioning().describe()
            ))),
        }
    }

    /// The condition rows of the images (one forward of batch K).
    pub fn rows(&self) -> ConditionRows {
        match self {
            Conditions::Class { labels, .. } => ConditionRows::Class(Array1::from(labels.clone())),
            Conditions::Text { cond, .. } => ConditionRows::Text(cond.clone()),
        }
    }

    /// The rows of a guided forward, `[negative x K, condition x K]`, if there is a negative.
    pub fn guided_rows(&self) -> Result<Option<ConditionRows>> {
        Ok(match self {
            Conditions::Class { labels, null } => Some(ConditionRows::Class(
                std::iter::repeat_n(*null, labels.len())
                    .chain(labels.iter().copied())
                    .collect(),
            )),
            Conditions::Text { cond, uncond } => match uncond {
                Some(u) => Some(ConditionRows::Text(
                    concatenate(Axis(0), &[u.view(), cond.view()])
                        .map_err(|e| RuntimeError::Shape(format!("negative and prompt embeddings: {e}")))?,
                )),
                None => None,
            },
        })
    }
}

/// Owned condition rows of one forward's batch.
#[derive(Debug, Clone)]
pub enum ConditionRows {
    /// Class labels `[B]`.
    Class(Array1<i64>),
    /// Text embeddings `[B, L, E]`.
    Text(Array3<f32>),
}

impl ConditionRows {
    /// Borrowed, as a forward takes them.
    pub fn view(&self) -> CondRows<'_> {
        match self {
            ConditionRows::Class(y) => CondRows::Class(y.view()),
            ConditionRows::Text(t) => CondRows::Text(t.view()),
        }
    }
}

//! Which Linear layers a variant touches: every `Gemm` whose weight is a checkpoint tensor `<scope>.weight`,
//! filtered by fnmatch-style globs over the scope (the checkpoint module path, e.g. `patch_blocks.3.attn.qkv`).
//!
//! Precedence: a scope matching a user `include` glob is selected; otherwise one matching a user `exclude` glob is
//! not; otherwise it is selected unless it matches one of the format's default excludes.

use crate::config::QuantConfig;
use pixeldit_graph::{Graph, Value};

/// One Linear layer (`Gemm(transB=1)` on a 2-D input) of the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Linear {
    /// Checkpoint module path, e.g. `patch_blocks.0.attn.qkv`.
    pub scope: String,
    /// Name of the `Gemm` node.
    pub node: String,
    /// The 2-D activation input `[rows, in]`.
    pub input: Value,
    /// Weight initializer name (`<scope>.weight`, `[out, in]`).
    pub weight: String,
    /// Bias initializer name, if any.
    pub bias: Option<String>,
    /// Output features.
    pub out_features: usize,
    /// Input features.
    pub in_features: usize,
}

/// Every Linear layer of `g`, in graph order.
pub fn find_linears(g: &Graph) -> Vec<Linear> {
    let weights: std::collections::HashMap<Value, (String, Vec<usize>)> = g
        .initializers()
        .filter(|(_, i)| i.is_weight())
        .map(|(v, i)| (v, (i.name.clone(), i.shape.clone())))
        .collect();
    let mut out = Vec::new();
    for n in g.nodes() {
        if n.op_type != "Gemm" || !n.domain.is_empty() || n.inputs.len() < 2 {
            continue;
        }
        let (Some(input), Some(w)) = (n.inputs[0], n.inputs[1]) else {
            continue;
        };
        let Some((wname, shape)) = weights.get(&w) else {
            continue;
        };
        let Some(scope) = wname.strip_suffix(".weight") else {
            continue;
        };
        if shape.len() != 2 {
            continue;
        }
        let bias = n
            .inputs
            .get(2)
            .copied()
            .flatten()
            .and_then(|b| weights.get(&b).map(|(name, _)| name.clone()));
        out.push(Linear {
            scope: scope.to_string(),
            node: n.name.clone(),
            input,
            weight: wname.clone(),
            bias,
            out_features: shape[0],
            in_features: shape[1],
        });
    }
    out
}

/// Whether `cfg` selects the layer `scope` (see the module docs for the precedence).
pub fn is_selected(scope: &str, cfg: &QuantConfig) -> bool {
    let any = |globs: &[String]| globs.iter().any(|p| fnmatch(p, scope));
    if any(&cfg.include) {
        return true;
    }
    if any(&cfg.exclude) {
        return false;
    }
    !any(&cfg.default_exclude)
}

/// Python `fnmatch.fnmatchcase`: `*` (any run, dots included), `?` (one character), `[seq]`, `[!seq]`, ranges
/// `a-z`; a `[` without a closing `]` is literal.
pub fn fnmatch(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = name.chars().collect();
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, si));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                '[' => match class(&p[pi..], s[si]) {
                    Some((true, len)) => {
                        pi += len;
                        si += 1;
                        continue;
                    }
                    Some((false, _)) => {}
                    None if s[si] == '[' => {
                        pi += 1;
                        si += 1;
                        continue;
                    }
                    None => {}
                },
                c if c == s[si] => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, ss)) => {
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Matches `c` against the class at the start of `p` (`[...]`): `(matched, pattern length)`, or `None` when the
/// class has no closing bracket.
fn class(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = p.get(i) == Some(&'!');
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            matched |= p[i] <= c && c <= p[i + 2];
            i += 3;
        } else {
            matched |= p[i] == c;
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::fnmatch;

    #[test]
    fn fnmatch_like_python() {
        assert!(fnmatch("patch_blocks.*.attn.qkv", "patch_blocks.12.attn.qkv"));
        assert!(fnmatch("*", "final_layer.linear"));
        assert!(fnmatch("pixel_blocks.*.mlp.*", "pixel_blocks.0.mlp.fc1"));
        assert!(!fnmatch("pixel_blocks.*.mlp.*", "pixel_blocks.0.attn.qkv"));
        assert!(fnmatch("patch_blocks.?.mlp.w[13]", "patch_blocks.3.mlp.w3"));
        assert!(!fnmatch("patch_blocks.?.mlp.w[13]", "patch_blocks.3.mlp.w2"));
        assert!(!fnmatch("patch_blocks.?.mlp.w1", "patch_blocks.13.mlp.w1"));
        assert!(fnmatch("patch_blocks.[!0].*", "patch_blocks.1.attn.proj"));
        assert!(!fnmatch("patch_blocks.[!0].*", "patch_blocks.0.attn.proj"));
        assert!(fnmatch("patch_blocks.[0-2].*", "patch_blocks.2.attn.proj"));
        assert!(fnmatch("a[b", "a[b"));
        assert!(fnmatch("*.weight*", "x.weight"));
        assert!(!fnmatch("t_embedder.*", "patch_blocks.0.t_embedder.x"));
    }
}

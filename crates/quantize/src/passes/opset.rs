//! Raises the default-domain opset of a built graph (FLOAT8 `QuantizeLinear`/`DequantizeLinear` need 19).
//!
//! Of the ops the exporter emits only `ReduceMean` changes form on the way (opset 18 moves `axes` from an
//! attribute to an input); everything else keeps its meaning from 17 to 19.

use crate::Result;
use pixeldit_graph::{Attr, Graph};

/// Raises `g` to at least `to`, rewriting `ReduceMean` when crossing opset 18.
pub fn upgrade_opset(g: &mut Graph, to: i64) -> Result<()> {
    if g.opset() >= to {
        return Ok(());
    }
    if g.opset() < 18 && to >= 18 {
        let targets: Vec<usize> = g
            .nodes()
            .iter()
            .enumerate()
            .filter(|(_, n)| n.op_type == "ReduceMean" && n.domain.is_empty() && n.attrs.contains_key("axes"))
            .map(|(i, _)| i)
            .collect();
        for i in targets {
            let Some(Attr::Ints(axes)) = g.nodes_mut()[i].attrs.remove("axes") else {
                unreachable!("filtered on the attribute")
            };
            let c = g.const_i64(&axes)?;
            g.nodes_mut()[i].inputs.push(Some(c));
        }
    }
    g.require_opset(to);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixeldit_graph::{DType, Dim};

    #[test]
    fn reduce_mean_axes_become_an_input() {
        let mut g = Graph::new(17);
        let x = g
            .input("x", DType::F32, vec![Dim::Batch(1), Dim::Fixed(4)])
            .unwrap();
        let m = g.reduce_mean(x, &[-1], true).unwrap();
        g.output("m", m).unwrap();
        upgrade_opset(&mut g, 19).unwrap();
        assert_eq!(g.opset(), 19);
        let n = &g.nodes()[0];
        assert!(!n.attrs.contains_key("axes"));
        assert_eq!(n.inputs.len(), 2);
        assert!(
            g.dump().contains("ReduceMean {keepdims=1} (x, const/0)"),
            "{}",
            g.dump()
        );
    }
}

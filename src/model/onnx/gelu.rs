//! Pattern fusion: the erf form of GELU as exporters write it (opset < 20 has no Gelu op),
//! x · 0.5 · (1 + erf(x / √2)) = Mul(Mul(x, Add(Erf(Div(x, √2)), 1)), 0.5), becomes one
//! `Gelu` node named after (and writing the output of) its last Mul, so the integer engine
//! runs it as one lookup table.

use super::Importer;
use super::convert::Pending;
use crate::model::{BinaryOp, Op, UnaryOp, ValueId};

/// The scalar value of constant `v`, if it is one.
fn scalar(imp: &Importer, v: Option<ValueId>) -> Option<f32> {
    let t = imp.consts.get(&v?)?;
    match t.as_f32()? {
        [c] => Some(*c),
        _ => None,
    }
}

/// The op of node `i`, once finished.
fn op(imp: &Importer, i: usize) -> Option<&Op> {
    match &imp.nodes[i].pending {
        Pending::Op(o) => Some(o),
        _ => None,
    }
}

/// The only reader of value `v` (none when it is a graph output or read twice).
fn only_reader(imp: &Importer, v: ValueId) -> Option<usize> {
    if imp.outputs.contains(&v) {
        return None;
    }
    let mut readers = (0..imp.nodes.len()).filter(|&k| imp.nodes[k].inputs.contains(&Some(v)));
    let r = readers.next()?;
    readers.next().is_none().then_some(r)
}

/// The other input of a two-input node than `v`.
fn other(imp: &Importer, i: usize, v: ValueId) -> Option<Option<ValueId>> {
    match imp.nodes[i].inputs.as_slice() {
        [a, b] if *a == Some(v) => Some(*b),
        [a, b] if *b == Some(v) => Some(*a),
        _ => None,
    }
}

/// x when node `d` is x / √2 or x · (1/√2) (either operand order for the Mul).
fn scaled_input(imp: &Importer, d: usize) -> Option<ValueId> {
    let n = &imp.nodes[d];
    let [a, b] = n.inputs.as_slice() else {
        return None;
    };
    let close = |c: Option<f32>, want: f32| c.is_some_and(|c| (c - want).abs() < 1e-3);
    match op(imp, d)? {
        Op::Binary(BinaryOp::Div) if close(scalar(imp, *b), std::f32::consts::SQRT_2) => *a,
        Op::Binary(BinaryOp::Mul) if close(scalar(imp, *b), std::f32::consts::FRAC_1_SQRT_2) => *a,
        Op::Binary(BinaryOp::Mul) if close(scalar(imp, *a), std::f32::consts::FRAC_1_SQRT_2) => *b,
        _ => None,
    }
}

/// Whether node `m` is a Mul of value `v` by the scalar `c` (`Some`) or by value `x`.
fn mul_of(imp: &Importer, m: usize, v: ValueId, by: Result<f32, ValueId>) -> bool {
    if !matches!(op(imp, m), Some(Op::Binary(BinaryOp::Mul))) {
        return false;
    }
    match (other(imp, m, v), by) {
        (Some(o), Ok(c)) => scalar(imp, o) == Some(c),
        (Some(o), Err(x)) => o == Some(x),
        _ => false,
    }
}

/// The GELU chain starting at node `d`: (x, the nodes [scale, erf, add, mul, mul]).
fn chain(imp: &Importer, d: usize) -> Option<(ValueId, [usize; 5])> {
    let x = scaled_input(imp, d)?;
    let e = only_reader(imp, imp.nodes[d].output)?;
    if !matches!(op(imp, e), Some(Op::Unary(UnaryOp::Erf))) {
        return None;
    }
    let a = only_reader(imp, imp.nodes[e].output)?;
    let one = scalar(imp, other(imp, a, imp.nodes[e].output)?)?;
    if !matches!(op(imp, a), Some(Op::Binary(BinaryOp::Add))) || one != 1.0 {
        return None;
    }
    // The two Muls, by x and by 0.5, in either order.
    let va = imp.nodes[a].output;
    let m1 = only_reader(imp, va)?;
    let m2 = only_reader(imp, imp.nodes[m1].output)?;
    let v1 = imp.nodes[m1].output;
    let ok = (mul_of(imp, m1, va, Err(x)) && mul_of(imp, m2, v1, Ok(0.5)))
        || (mul_of(imp, m1, va, Ok(0.5)) && mul_of(imp, m2, v1, Err(x)));
    ok.then_some((x, [d, e, a, m1, m2]))
}

/// Fuses every erf-form GELU chain into one `Gelu` node.
pub(super) fn fuse_gelu(imp: &mut Importer) {
    let mut d = 0;
    while d < imp.nodes.len() {
        let Some((x, nodes)) = chain(imp, d) else {
            d += 1;
            continue;
        };
        let last = nodes[4];
        let node = &mut imp.nodes[last];
        node.pending = Pending::Op(Op::Unary(UnaryOp::Gelu { tanh: false }));
        node.op_type = "Gelu".to_string();
        node.inputs = vec![Some(x)];
        let mut drop = nodes[..4].to_vec();
        drop.sort_unstable();
        for k in drop.into_iter().rev() {
            imp.nodes.remove(k);
        }
    }
}

//! Typed access to an ONNX node's attributes.

use onnx_rs::ast::{Attribute, Node};

/// A node's attributes, looked up by name.
pub struct Attrs<'n, 'a>(pub &'n [Attribute<'a>]);

impl<'a> Attrs<'_, 'a> {
    /// The attributes of `node`.
    pub fn of<'n>(node: &'n Node<'a>) -> Attrs<'n, 'a> {
        Attrs(&node.attribute)
    }

    fn get(&self, name: &str) -> Option<&Attribute<'a>> {
        self.0.iter().find(|a| a.name == name)
    }

    /// An integer attribute, or `default`.
    pub fn int(&self, name: &str, default: i64) -> i64 {
        self.get(name).map_or(default, |a| a.i)
    }

    /// A float attribute, or `default`.
    pub fn float(&self, name: &str, default: f32) -> f32 {
        self.get(name).map_or(default, |a| a.f)
    }

    /// An integer-list attribute, if present.
    pub fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.get(name).map(|a| a.ints.clone())
    }

    /// A string attribute, if present.
    pub fn string(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(|a| String::from_utf8_lossy(a.s).into_owned())
    }

    /// A tensor attribute (Constant's `value`), if present.
    pub fn tensor(&self, name: &str) -> Option<&onnx_rs::ast::TensorProto<'a>> {
        self.get(name).and_then(|a| a.t.as_ref())
    }

    /// Whether the attribute is present.
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

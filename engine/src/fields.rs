//! The payload fields a rule reads, as a tree of paths (`a`, `a.b.c`). The dialect
//! collects it from the rule's expressions; the decoder materialises only what it names.

use std::collections::BTreeMap;

/// The payload fields an expression reads, as a tree of paths. `whole` means the field is
/// read as a whole (so all of it is decoded); otherwise only the listed children are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldTree {
    pub whole: bool,
    pub children: BTreeMap<String, FieldTree>,
}

impl FieldTree {
    pub fn add(&mut self, path: &[String]) {
        let mut node = self;
        for part in path {
            if node.whole {
                return;
            }
            node = node.children.entry(part.clone()).or_default();
        }
        node.whole = true;
        node.children.clear();
    }

    pub fn merge(&mut self, other: &FieldTree) {
        if other.whole {
            self.whole = true;
            self.children.clear();
        }
        if self.whole {
            return;
        }
        for (k, v) in &other.children {
            self.children.entry(k.clone()).or_default().merge(v);
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.whole && self.children.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_tree_whole_subsumes_parts() {
        let mut t = FieldTree::default();
        t.add(&["a".into(), "b".into()]);
        t.add(&["a".into()]);
        t.add(&["a".into(), "c".into()]);
        assert!(t.children["a"].whole);
        assert!(t.children["a"].children.is_empty());
    }
}

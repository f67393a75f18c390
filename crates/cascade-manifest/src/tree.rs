//! Keeping going after a structural error in a file (an unknown field, a repeated one,
//! a value of the wrong type). serde stops at the first error, and a streaming parser
//! cannot resume in the middle of a value, so a file that failed is read again into a
//! located tree of plain YAML values, and the AST is deserialized from that tree instead:
//!
//! - an unknown or repeated field of a struct is recorded and skipped, and deserializing
//!   goes on;
//! - a value of the wrong type fails the pass; the innermost value that failed is
//!   recorded and cut from the tree (its mapping entry or list item), and the pass runs
//!   again, until the AST comes out or the cap is reached.
//!
//! What survives is an AST with the bad parts left out, which the resolver checks like
//! any other, so one run reports every problem of the file (rust-analyzer's lossless
//! tree plus validation, on a smaller scale). The fast path, deserializing the text
//! directly, is unchanged for files without such errors.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};
use serde::{Deserialize, Deserializer};
use serde_saphyr::{Location, Spanned};

/// The name our [`crate::ast::S`] asks for when the tree is being read, so it takes
/// its location from the tree rather than from serde-saphyr's protocol.
pub(crate) const LOCATED: &str = "__cascade_located";

/// More passes than this means a file with more problems than we show anyway.
const MAX_PASSES: usize = 100;

thread_local! {
    /// Set while a tree is being deserialized on this thread.
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    /// The location of the value a `S<T>` is about to read (set just before).
    static NEXT: Cell<Option<(Location, Location)>> = const { Cell::new(None) };
}

/// Whether an `S<T>` is being read from a tree on this thread.
pub(crate) fn active() -> bool {
    ACTIVE.with(Cell::get)
}

/// The location of the value being read, handed over by the tree's deserializer.
pub(crate) fn take_location() -> (Location, Location) {
    NEXT.with(Cell::take)
        .unwrap_or((Location::UNKNOWN, Location::UNKNOWN))
}

/// One YAML value as the parser read it, with where it was referenced and defined.
#[derive(Debug)]
pub(crate) struct Node {
    kind: Kind,
    referenced: Location,
    defined: Location,
}

#[derive(Debug)]
enum Kind {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Spanned::<Kind>::deserialize(d)?;
        Ok(Node {
            kind: s.value,
            referenced: s.referenced,
            defined: s.defined,
        })
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Kind;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Kind, E> {
                Ok(Kind::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Kind, E> {
                Ok(Kind::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Kind, D::Error> {
                Kind::deserialize(d)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Kind, E> {
                Ok(Kind::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Kind, E> {
                Ok(Kind::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Kind, E> {
                Ok(Kind::UInt(v))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Kind, E> {
                Ok(i64::try_from(v).map_or(Kind::Float(v as f64), Kind::Int))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Kind, E> {
                Ok(u64::try_from(v).map_or(Kind::Float(v as f64), Kind::UInt))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Kind, E> {
                Ok(Kind::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Kind, E> {
                Ok(Kind::Str(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Kind, E> {
                Ok(Kind::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Kind, A::Error> {
                let mut out = Vec::new();
                while let Some(n) = seq.next_element::<Node>()? {
                    out.push(n);
                }
                Ok(Kind::Seq(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Kind, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<Node, Node>()? {
                    out.push(entry);
                }
                Ok(Kind::Map(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// One structural problem found while reading the tree.
#[derive(Debug)]
pub(crate) enum Problem {
    /// A field the struct does not have, at its key.
    UnknownField {
        field: String,
        expected: &'static [&'static str],
        at: Location,
    },
    /// A field given a second time, at the second key.
    DuplicateField { field: String, at: Location },
    /// A value of the wrong type; `field` is the struct field it was the value of, if
    /// any (so the resolver does not also call it missing).
    WrongType {
        message: String,
        at: Location,
        field: Option<String>,
    },
}

impl Problem {
    fn at(&self) -> Location {
        match self {
            Problem::UnknownField { at, .. }
            | Problem::DuplicateField { at, .. }
            | Problem::WrongType { at, .. } => *at,
        }
    }
}

/// Deserializes `T` from `tree`, leaving out what does not fit: the AST (when one
/// came out within the cap) and every problem, in the order of the file.
pub(crate) fn recover<T: DeserializeOwned>(tree: &Node, text: &str) -> (Option<T>, Vec<Problem>) {
    let mut cut: BTreeSet<usize> = BTreeSet::new();
    let mut problems = Vec::new();
    let root = id(tree);
    let _guard = Active::on();
    let mut result = None;
    for _ in 0..MAX_PASSES {
        let pass = Pass {
            text,
            cut: &cut,
            found: RefCell::new(Vec::new()),
            field_of: RefCell::new(None),
        };
        match T::deserialize(De {
            node: tree,
            pass: &pass,
        }) {
            Ok(v) => {
                problems.extend(pass.found.into_inner());
                result = Some(v);
                break;
            }
            Err(e) => {
                let (node, at, field) = match e.at {
                    Some(t) => t,
                    None => (root, tree.referenced, None),
                };
                problems.push(Problem::WrongType {
                    message: e.message,
                    at,
                    field,
                });
                // A value that cannot be left out (the whole file) ends the recovery.
                if node == root || !cut.insert(node) {
                    break;
                }
            }
        }
    }
    problems.sort_by_key(|p| offset(&p.at()));
    (result, problems)
}

fn offset(l: &Location) -> u64 {
    l.span().byte_offset().unwrap_or(u64::MAX)
}

/// Identity of a node for one run of [`recover`]: the tree does not move meanwhile.
fn id(n: &Node) -> usize {
    std::ptr::from_ref(n) as usize
}

struct Active;

impl Active {
    fn on() -> Active {
        ACTIVE.with(|a| a.set(true));
        Active
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        ACTIVE.with(|a| a.set(false));
        NEXT.with(|n| n.set(None));
    }
}

struct Pass<'a> {
    text: &'a str,
    /// Values left out (mapping entries whose key or value is here, list items).
    cut: &'a BTreeSet<usize>,
    found: RefCell<Vec<Problem>>,
    /// The struct field whose value is being read, for [`Problem::WrongType`].
    field_of: RefCell<Option<String>>,
}

#[derive(Debug)]
pub(crate) struct Error {
    message: String,
    /// The innermost node that failed, where it is, and the field it is the value of.
    at: Option<(usize, Location, Option<String>)>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        Error {
            message: msg.to_string(),
            at: None,
        }
    }
}

#[derive(Clone, Copy)]
struct De<'a> {
    node: &'a Node,
    pass: &'a Pass<'a>,
}

impl<'a> De<'a> {
    /// Errors name the innermost node they came from.
    fn tag<T>(self, r: Result<T, Error>) -> Result<T, Error> {
        r.map_err(|mut e| {
            if e.at.is_none() {
                let field = self.pass.field_of.borrow().clone();
                e.at = Some((id(self.node), self.node.referenced, field));
            }
            e
        })
    }

    fn fail<T>(self, message: &str) -> Result<T, Error> {
        self.tag(Err(<Error as de::Error>::custom(message)))
    }

    /// The text of a plain scalar as written (`42`, `yes`), which is what a string
    /// field gets, as serde-saphyr gives it.
    fn raw(self) -> String {
        let s = self.node.defined.span();
        match (s.byte_offset(), s.byte_len()) {
            (Some(o), Some(l)) => {
                let o = usize::try_from(o).unwrap_or(usize::MAX);
                let l = usize::try_from(l).unwrap_or(0);
                self.pass
                    .text
                    .get(o..o.saturating_add(l))
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            }
            _ => String::new(),
        }
    }

    fn child(self, node: &'a Node) -> De<'a> {
        De {
            node,
            pass: self.pass,
        }
    }
}

impl<'de, 'a> Deserializer<'de> for De<'a> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let r = match &self.node.kind {
            Kind::Null => v.visit_unit(),
            Kind::Bool(b) => v.visit_bool(*b),
            Kind::Int(i) => v.visit_i64(*i),
            Kind::UInt(u) => v.visit_u64(*u),
            Kind::Float(f) => v.visit_f64(*f),
            Kind::Str(s) => v.visit_str(s),
            Kind::Seq(items) => v.visit_seq(Seq {
                de: self,
                items: items.iter(),
            }),
            Kind::Map(entries) => v.visit_map(Map {
                de: self,
                entries: entries.iter(),
                value: None,
            }),
        };
        self.tag(r)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let r = match self.node.kind {
            Kind::Null => v.visit_none(),
            _ => v.visit_some(self),
        };
        self.tag(r)
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let r = match &self.node.kind {
            Kind::Str(s) => v.visit_str(s),
            Kind::Null => return self.fail("null is not allowed here"),
            Kind::Bool(_) | Kind::Int(_) | Kind::UInt(_) | Kind::Float(_) => {
                v.visit_string(self.raw())
            }
            Kind::Seq(_) | Kind::Map(_) => return self.fail("expected string scalar"),
        };
        self.tag(r)
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_str(v)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_str(v)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match &self.node.kind {
            Kind::Seq(_) => self.deserialize_any(v),
            _ => self.fail("expected a list"),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, Error> {
        self.deserialize_seq(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        v: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(v)
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match &self.node.kind {
            Kind::Map(_) => self.deserialize_any(v),
            _ => self.fail("expected a mapping of `key: value`"),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        let Kind::Map(entries) = &self.node.kind else {
            return self.fail("expected a mapping of `key: value`");
        };
        let r = v.visit_map(Struct {
            de: self,
            fields,
            entries: entries.iter(),
            seen: BTreeSet::new(),
            value: None,
        });
        self.tag(r)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        if name == LOCATED {
            NEXT.with(|n| n.set(Some((self.node.referenced, self.node.defined))));
        }
        let r = v.visit_newtype_struct(self);
        self.tag(r)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf unit
        unit_struct enum
    }
}

struct Seq<'a> {
    de: De<'a>,
    items: std::slice::Iter<'a, Node>,
}

impl<'de, 'a> SeqAccess<'de> for Seq<'a> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        let Some(item) = self.items.find(|n| !self.de.pass.cut.contains(&id(n))) else {
            return Ok(None);
        };
        // A list item is not a field's value.
        let outer = self.de.pass.field_of.replace(None);
        let r = seed.deserialize(self.de.child(item)).map(Some);
        *self.de.pass.field_of.borrow_mut() = outer;
        r
    }
}

/// A mapping read as a map (`Entries`): every entry, duplicates included.
struct Map<'a> {
    de: De<'a>,
    entries: std::slice::Iter<'a, (Node, Node)>,
    value: Option<&'a Node>,
}

impl<'de, 'a> MapAccess<'de> for Map<'a> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let cut = self.de.pass.cut;
        let Some((k, v)) = self
            .entries
            .find(|(k, v)| !cut.contains(&id(k)) && !cut.contains(&id(v)))
        else {
            return Ok(None);
        };
        self.value = Some(v);
        let outer = self.de.pass.field_of.replace(None);
        let r = seed.deserialize(self.de.child(k)).map(Some);
        *self.de.pass.field_of.borrow_mut() = outer;
        r
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let Some(v) = self.value.take() else {
            return Err(<Error as de::Error>::custom("a value without a key"));
        };
        let outer = self.de.pass.field_of.replace(None);
        let r = seed.deserialize(self.de.child(v));
        *self.de.pass.field_of.borrow_mut() = outer;
        r
    }
}

/// A mapping read as a struct: unknown and repeated fields are recorded and skipped.
struct Struct<'a> {
    de: De<'a>,
    fields: &'static [&'static str],
    entries: std::slice::Iter<'a, (Node, Node)>,
    seen: BTreeSet<&'a str>,
    value: Option<(&'a str, &'a Node)>,
}

impl<'de, 'a> MapAccess<'de> for Struct<'a> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let pass = self.de.pass;
        for (k, v) in self.entries.by_ref() {
            if pass.cut.contains(&id(k)) || pass.cut.contains(&id(v)) {
                continue;
            }
            let Kind::Str(name) = &k.kind else {
                // A key that is not a string is never a field: it is unknown.
                let field = De { node: k, pass }.raw();
                pass.found.borrow_mut().push(Problem::UnknownField {
                    field,
                    expected: self.fields,
                    at: k.referenced,
                });
                continue;
            };
            if !self.fields.contains(&name.as_str()) {
                pass.found.borrow_mut().push(Problem::UnknownField {
                    field: name.clone(),
                    expected: self.fields,
                    at: k.referenced,
                });
                continue;
            }
            if !self.seen.insert(name) {
                pass.found.borrow_mut().push(Problem::DuplicateField {
                    field: name.clone(),
                    at: k.referenced,
                });
                continue;
            }
            self.value = Some((name, v));
            let key: de::value::StrDeserializer<'_, Error> = name.as_str().into_deserializer();
            return seed.deserialize(key).map(Some);
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let Some((name, v)) = self.value.take() else {
            return Err(<Error as de::Error>::custom("a value without a key"));
        };
        let outer = self.de.pass.field_of.replace(Some(name.to_string()));
        let r = seed.deserialize(self.de.child(v));
        *self.de.pass.field_of.borrow_mut() = outer;
        r
    }
}

//! The resource store: every object of the config, by kind, in config order
//! (file, then line), kept in [`Resources`] as the validator and compiler
//! read it. Sources push [`Change`]s (upserts and deletes of single
//! objects): the file source ([`super::source::FileSource`]) turns a changed
//! file into changes of the objects that changed in it; another source (a
//! distributed store) would push the same changes. Changes apply with an
//! [`Undo`] log, so a change set that turns out invalid is taken back whole.
use std::{cmp::Ordering, path::Path};

use super::{EndpointSliceBody, Resource, Resources, model::*};
use crate::plan::Origin;

/// Where an object is: its file and line (what errors name). Objects are in
/// config order: files in path order (component by component, as a
/// directory is read), then by line.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pos {
    /// Shared with the object's `Origin`.
    pub file: std::sync::Arc<str>,
    pub line: u64,
}

impl Pos {
    pub fn of(o: &Origin) -> Pos {
        Pos {
            file: o.file.clone(),
            line: o.line,
        }
    }
}

/// Config order of two positions.
pub fn order(a_file: &str, a_line: u64, b_file: &str, b_line: u64) -> Ordering {
    Path::new(a_file)
        .cmp(Path::new(b_file))
        .then(a_line.cmp(&b_line))
}

impl PartialOrd for Pos {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pos {
    fn cmp(&self, other: &Self) -> Ordering {
        order(&self.file, self.line, &other.file, other.line)
    }
}

fn find<S>(list: &[Resource<S>], at: &Pos) -> Result<usize, usize> {
    list.binary_search_by(|r| order(&r.origin.file, r.origin.line, &at.file, at.line))
}

/// The resource of `list` (one kind, in config order) at `at`.
pub fn at<'a, S>(list: &'a [Resource<S>], pos: &Pos) -> Option<&'a Resource<S>> {
    find(list, pos).ok().map(|i| &list[i])
}

/// One change to the store.
#[derive(Clone, Debug)]
pub enum Change {
    /// Add the object, or replace the one of its kind at its position.
    Upsert(Box<Object>),
    /// Remove the object of `kind` at `at`.
    Delete { kind: Kind, at: Pos },
}

impl Change {
    pub fn kind(&self) -> Kind {
        match self {
            Change::Upsert(o) => o.kind(),
            Change::Delete { kind, .. } => *kind,
        }
    }
}

/// What a change replaced, to take it back.
#[derive(Debug, Default)]
pub struct Undo(Vec<(Kind, Pos, Option<Object>)>);

macro_rules! object_enum {
    ($($kind:ident, $api:ident, $field:ident, $spec:ty, $parse:ident;)*) => {
        /// The kinds of object routerd reads.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[allow(clippy::upper_case_acronyms)]
        pub enum Kind {
            $($kind,)*
        }

        /// One object of any kind. It lives only on its way to the store
        /// (a parse result, a change), which keeps each kind in its own
        /// vector: the size of the largest variant costs nothing there.
        #[derive(Clone, Debug)]
        #[allow(clippy::upper_case_acronyms, clippy::large_enum_variant)]
        pub enum Object {
            $($kind(Resource<$spec>),)*
        }

        impl Object {
            pub fn kind(&self) -> Kind {
                match self {
                    $(Object::$kind(_) => Kind::$kind,)*
                }
            }

            pub fn origin(&self) -> &Origin {
                match self {
                    $(Object::$kind(r) => &r.origin,)*
                }
            }
        }

        impl Resources {
            /// Add `o`, or replace the object of its kind at its position;
            /// what it replaced (`None`: nothing).
            pub fn upsert(&mut self, o: Object) -> Option<Object> {
                let at = Pos::of(o.origin());
                match o {
                    $(Object::$kind(r) => match find(&self.$field, &at) {
                        Ok(i) => Some(Object::$kind(std::mem::replace(&mut self.$field[i], r))),
                        Err(i) => {
                            self.$field.insert(i, r);
                            None
                        }
                    },)*
                }
            }

            /// Capacity down to the objects (after a first load: vectors
            /// grown by doubling keep up to half again of slack).
            pub fn shrink_to_fit(&mut self) {
                $(self.$field.shrink_to_fit();)*
            }

            /// Remove the object of `kind` at `at`, if there is one.
            pub fn delete(&mut self, kind: Kind, at: &Pos) -> Option<Object> {
                match kind {
                    $(Kind::$kind => find(&self.$field, at)
                        .ok()
                        .map(|i| Object::$kind(self.$field.remove(i))),)*
                }
            }

            /// The object of `kind` at `at`.
            pub fn get(&self, kind: Kind, at: &Pos) -> Option<Object> {
                match kind {
                    $(Kind::$kind => find(&self.$field, at)
                        .ok()
                        .map(|i| Object::$kind(self.$field[i].clone())),)*
                }
            }
        }
    };
}
crate::for_each_kind!(object_enum);

impl Resources {
    /// Apply `changes` in order; the log takes them back.
    pub fn apply(&mut self, changes: Vec<Change>) -> Undo {
        let mut undo = Undo::default();
        for c in changes {
            match c {
                Change::Upsert(o) => {
                    let (kind, at) = (o.kind(), Pos::of(o.origin()));
                    let old = self.upsert(*o);
                    undo.0.push((kind, at, old));
                }
                Change::Delete { kind, at } => {
                    if let Some(old) = self.delete(kind, &at) {
                        undo.0.push((kind, at, Some(old)));
                    }
                }
            }
        }
        undo
    }

    /// Take back what [`Resources::apply`] did.
    pub fn undo(&mut self, undo: Undo) {
        for (kind, at, old) in undo.0.into_iter().rev() {
            self.delete(kind, &at);
            if let Some(o) = old {
                self.upsert(o);
            }
        }
    }
}

//! The items of a set of source files, by name: the structs and enums config types may be,
//! and the functions, constants and `Default` impls their defaults may come from.

use std::collections::HashMap;
use std::path::PathBuf;

use syn::{Attribute, Block, Expr, ImplItem, Item, ItemEnum, ItemStruct, Type};

use crate::Problem;

/// An item and the file it was found in (an index into [`Index::files`]).
pub(crate) struct Def<T> {
    pub file: usize,
    pub item: T,
}

/// Items found in the given files; `#[cfg(test)]` modules are left out, as test-only types
/// would make real names ambiguous.
#[derive(Default)]
pub(crate) struct Index {
    pub files: Vec<PathBuf>,
    structs: HashMap<String, Vec<Def<ItemStruct>>>,
    enums: HashMap<String, Vec<Def<ItemEnum>>>,
    /// Free functions by name, associated ones as `Type::name`: their bodies.
    fns: HashMap<String, Vec<Def<Block>>>,
    /// Constants, keyed like `fns`: their values.
    consts: HashMap<String, Vec<Def<Expr>>>,
    /// The body of `fn default()` in `impl Default for Type`, by type name.
    defaults: HashMap<String, Vec<Def<Block>>>,
}

impl Index {
    /// Index parsed files; `files[i]` is the path messages name for file `i`.
    pub fn new(files: Vec<(PathBuf, syn::File)>) -> Self {
        let mut index = Index::default();
        for (file, (path, ast)) in files.into_iter().enumerate() {
            index.files.push(path);
            index.add(file, ast.items);
        }
        index
    }

    fn add(&mut self, file: usize, items: Vec<Item>) {
        for item in items {
            match item {
                Item::Struct(s) => push(&mut self.structs, s.ident.to_string(), file, s),
                Item::Enum(e) => push(&mut self.enums, e.ident.to_string(), file, e),
                Item::Fn(f) => push(&mut self.fns, f.sig.ident.to_string(), file, *f.block),
                Item::Const(c) => push(&mut self.consts, c.ident.to_string(), file, *c.expr),
                Item::Static(s) => push(&mut self.consts, s.ident.to_string(), file, *s.expr),
                Item::Impl(imp) => self.add_impl(file, imp),
                Item::Mod(m) if !is_cfg_test(&m.attrs) => {
                    if let Some((_, items)) = m.content {
                        self.add(file, items);
                    }
                }
                _ => {}
            }
        }
    }

    fn add_impl(&mut self, file: usize, imp: syn::ItemImpl) {
        let Some(ty) = type_name(&imp.self_ty) else {
            return;
        };
        let is_default = imp
            .trait_
            .as_ref()
            .and_then(|(_, path, _)| path.segments.last())
            .is_some_and(|s| s.ident == "Default");
        for item in imp.items {
            match item {
                ImplItem::Fn(f) if is_default && f.sig.ident == "default" => {
                    push(&mut self.defaults, ty.clone(), file, f.block);
                }
                ImplItem::Fn(f) if imp.trait_.is_none() => {
                    push(
                        &mut self.fns,
                        format!("{ty}::{}", f.sig.ident),
                        file,
                        f.block,
                    );
                }
                ImplItem::Const(c) if imp.trait_.is_none() => {
                    push(&mut self.consts, format!("{ty}::{}", c.ident), file, c.expr);
                }
                _ => {}
            }
        }
    }

    pub fn r#struct(&self, name: &str, from: usize) -> Result<Option<&Def<ItemStruct>>, Problem> {
        pick(&self.files, &self.structs, name, from)
    }

    pub fn r#enum(&self, name: &str, from: usize) -> Result<Option<&Def<ItemEnum>>, Problem> {
        pick(&self.files, &self.enums, name, from)
    }

    pub fn r#fn(&self, name: &str, from: usize) -> Result<Option<&Def<Block>>, Problem> {
        pick(&self.files, &self.fns, name, from)
    }

    pub fn r#const(&self, name: &str, from: usize) -> Result<Option<&Def<Expr>>, Problem> {
        pick(&self.files, &self.consts, name, from)
    }

    pub fn default_impl(&self, name: &str, from: usize) -> Result<Option<&Def<Block>>, Problem> {
        pick(&self.files, &self.defaults, name, from)
    }
}

fn push<T>(map: &mut HashMap<String, Vec<Def<T>>>, name: String, file: usize, item: T) {
    map.entry(name).or_default().push(Def { file, item });
}

/// Names are resolved without following `use`s: a definition in the same file wins, else
/// the one definition among all files; several (in other files) are an error.
fn pick<'a, T>(
    files: &[PathBuf],
    map: &'a HashMap<String, Vec<Def<T>>>,
    name: &str,
    from: usize,
) -> Result<Option<&'a Def<T>>, Problem> {
    let Some(defs) = map.get(name) else {
        return Ok(None);
    };
    if let Some(local) = defs.iter().find(|d| d.file == from) {
        return Ok(Some(local));
    }
    match defs.as_slice() {
        [one] => Ok(Some(one)),
        _ => Err(Problem::Ambiguous {
            name: name.to_string(),
            wanted_in: files.get(from).map_or_else(
                || "the reference's root".into(),
                |f| f.display().to_string(),
            ),
            files: defs
                .iter()
                .map(|d| files[d.file].display().to_string())
                .collect(),
        }),
    }
}

fn is_cfg_test(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Ident>()
                .is_ok_and(|ident| ident == "test")
    })
}

/// The last segment of a plain type path (`crate::wal::WhenFull` → `WhenFull`).
pub(crate) fn type_name(ty: &Type) -> Option<String> {
    match ty {
        Type::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
        Type::Group(g) => type_name(&g.elem),
        Type::Paren(p) => type_name(&p.elem),
        _ => None,
    }
}

//! From a root struct to the reference's sections: which fields are tables of their own,
//! which are keys, and each key's default and meaning.

use syn::{Field, Fields, ItemStruct, Type};

use crate::attrs::{self, Serde, SerdeDefault};
use crate::default::{Code, Context, Renderer, generic};
use crate::index::{Def, Index, type_name};
use crate::{DefaultValue, Problem, Row, Section};

/// What a field's type makes of it.
enum Shape<'a> {
    /// A config struct: a section of its own.
    Struct(&'a Def<ItemStruct>),
    /// An enum whose variants each wrap a config struct (`{ type = "..." }` tables): one
    /// section per variant, named by the variant.
    Family(Vec<(String, &'a Def<ItemStruct>)>),
    /// An enum of unit variants: a key whose allowed values are these.
    Values(String, Vec<String>),
    /// Anything else: a key, described by its doc comment alone.
    Leaf,
}

/// Walk the config types reachable from `root`, returning one section per struct that has
/// keys (parents before children), or every problem found on the way.
pub(crate) fn sections(
    index: &Index,
    name: &str,
    root: &str,
) -> Result<Vec<Section>, Vec<Problem>> {
    let mut walker = Walker {
        index,
        render: Renderer { index },
        sections: Vec::new(),
        problems: Vec::new(),
        stack: Vec::new(),
    };
    match index.r#struct(root, usize::MAX) {
        Ok(Some(def)) => walker.section(name.to_string(), def),
        Ok(None) => walker.problems.push(Problem::RootNotFound {
            name: root.to_string(),
        }),
        Err(p) => walker.problems.push(p),
    }
    if walker.problems.is_empty() {
        Ok(walker.sections)
    } else {
        Err(walker.problems)
    }
}

struct Walker<'a> {
    index: &'a Index,
    render: Renderer<'a>,
    sections: Vec<Section>,
    problems: Vec<Problem>,
    /// Structs being walked, to stop on a type that contains itself.
    stack: Vec<String>,
}

impl<'a> Walker<'a> {
    fn section(&mut self, id: String, def: &'a Def<ItemStruct>) {
        let name = def.item.ident.to_string();
        if self.stack.contains(&name) {
            self.problems.push(Problem::Cycle { name });
            return;
        }
        self.stack.push(name);
        let mut rows = Vec::new();
        let mut children = Vec::new();
        self.fields(&id, def, &mut rows, &mut children);
        if !rows.is_empty() {
            self.sections.push(Section { id, rows });
        }
        for (child_id, child) in children {
            self.section(child_id, child);
        }
        self.stack.pop();
    }

    /// The keys of `def` into `rows` and its sub-sections into `children`; flattened
    /// structs add their keys to `rows`.
    fn fields(
        &mut self,
        id: &str,
        def: &'a Def<ItemStruct>,
        rows: &mut Vec<Row>,
        children: &mut Vec<(String, &'a Def<ItemStruct>)>,
    ) {
        let container = match Serde::of(&def.item.attrs) {
            Ok(c) => c,
            Err(e) => return self.problems.push(self.syntax(def.file, e)),
        };
        let Fields::Named(fields) = &def.item.fields else {
            return;
        };
        for field in &fields.named {
            let serde = match Serde::of(&field.attrs) {
                Ok(s) => s,
                Err(e) => {
                    self.problems.push(self.syntax(def.file, e));
                    continue;
                }
            };
            if serde.skip {
                continue;
            }
            let ident = field
                .ident
                .as_ref()
                .map(|i| i.to_string())
                .unwrap_or_default();
            let key = serde
                .rename
                .clone()
                .unwrap_or_else(|| attrs::rename_field(&ident, container.rename_all.as_deref()));
            let (meaning, stated) = split_doc(&attrs::doc_lines(&field.attrs));
            let file = self.file(def.file);
            let here = || (def.item.ident.to_string(), ident.clone(), file.clone());
            if meaning.is_empty() {
                let (strukt, field, file) = here();
                self.problems.push(Problem::Undocumented {
                    strukt,
                    field,
                    file,
                });
            }
            let shape = match self.shape(&field.ty, def.file) {
                Ok(s) => s,
                Err(p) => {
                    self.problems.push(p);
                    continue;
                }
            };
            if serde.flatten {
                match shape {
                    Shape::Struct(inner) => self.fields(id, inner, rows, children),
                    _ => {
                        let (strukt, field, file) = here();
                        self.problems.push(Problem::Flatten {
                            strukt,
                            field,
                            file,
                        });
                    }
                }
                continue;
            }
            match shape {
                Shape::Struct(child) => {
                    children.push((format!("{id}.{key}"), child));
                    continue;
                }
                Shape::Family(variants) => {
                    for (variant, child) in variants {
                        children.push((format!("{id}.{key}.{variant}"), child));
                    }
                    continue;
                }
                Shape::Values(ty, values) => {
                    for value in values {
                        let plain = format!("`{value}`");
                        let quoted = format!("\"{value}\"");
                        if !meaning.contains(&plain) && !meaning.contains(&quoted) {
                            let (strukt, field, file) = here();
                            self.problems.push(Problem::ValueNotMentioned {
                                strukt,
                                field,
                                file,
                                ty: ty.clone(),
                                value,
                            });
                        }
                    }
                }
                Shape::Leaf => {}
            }
            if let Some(default) = self.default(def, &container, field, &serde, stated) {
                rows.push(Row {
                    key,
                    default,
                    meaning,
                });
            }
        }
    }

    /// The default shown for a key: the code's, or the doc comment's `Default:` line where
    /// the code has nothing to show; `None` (with the problem noted) when neither works.
    fn default(
        &mut self,
        def: &Def<ItemStruct>,
        container: &Serde,
        field: &Field,
        serde: &Serde,
        stated: Option<String>,
    ) -> Option<DefaultValue> {
        let strukt = def.item.ident.to_string();
        let ident = field
            .ident
            .as_ref()
            .map(|i| i.to_string())
            .unwrap_or_default();
        let code = match self.code_default(def, container, field, serde) {
            Ok(c) => c,
            Err(p) => {
                self.problems.push(p);
                return None;
            }
        };
        let file = self.file(def.file);
        let problem = match (stated, code) {
            (Some(_), None) => Problem::Overridden {
                strukt,
                field: ident,
                file,
                code: "no default (the key is required)".into(),
            },
            (Some(_), Some(Code::Value(v))) => Problem::Overridden {
                strukt,
                field: ident,
                file,
                code: v,
            },
            (Some(text), Some(_)) => return Some(DefaultValue::Text(text)),
            (None, Some(Code::Opaque(code))) => Problem::Unrenderable {
                strukt,
                field: ident,
                file,
                code,
            },
            (None, None) => return Some(DefaultValue::Required),
            (None, Some(Code::None)) => return Some(DefaultValue::None),
            (None, Some(Code::Value(v) | Code::Empty(v))) => return Some(DefaultValue::Literal(v)),
        };
        self.problems.push(problem);
        None
    }

    /// The default the code gives a field; `None` when the key is required.
    fn code_default(
        &self,
        def: &Def<ItemStruct>,
        container: &Serde,
        field: &Field,
        serde: &Serde,
    ) -> Result<Option<Code>, Problem> {
        let strukt = def.item.ident.to_string();
        let ident = field
            .ident
            .as_ref()
            .map(|i| i.to_string())
            .unwrap_or_default();
        let cx = Context {
            ty: &field.ty,
            humantime: serde
                .with
                .as_deref()
                .is_some_and(|w| w.starts_with("humantime_serde")),
            file: def.file,
            self_ty: Some(&strukt),
        };
        Ok(Some(match (&serde.default, &container.default) {
            (Some(SerdeDefault::Fn(path)), _) => self.render.function(path, cx)?,
            (Some(SerdeDefault::Trait), _) => self.render.type_default(cx)?,
            (None, Some(SerdeDefault::Trait)) => {
                match self.render.field_of_default_impl(&strukt, &ident, cx)? {
                    Some(code) => code,
                    None if attrs::derives(&def.item.attrs, "Default") => {
                        self.render.type_default(cx)?
                    }
                    None => Code::Opaque(format!("{strukt}::default() (no impl found)")),
                }
            }
            (None, Some(SerdeDefault::Fn(path))) => {
                self.render.field_of_function(path, &strukt, &ident, cx)?
            }
            // serde reads a missing `Option` as `None`, unless a function of its own reads it.
            (None, None) if is_option(&field.ty) && !serde.custom_deserializer() => Code::None,
            (None, None) => return Ok(None),
        }))
    }

    fn shape(&self, ty: &Type, file: usize) -> Result<Shape<'a>, Problem> {
        let ty = element(ty);
        let Some(name) = type_name(ty) else {
            return Ok(Shape::Leaf);
        };
        if let Some(def) = self.index.r#struct(&name, file)? {
            let serde = Serde::of(&def.item.attrs).map_err(|e| self.syntax(def.file, e))?;
            let section = attrs::derives(&def.item.attrs, "Deserialize")
                && matches!(def.item.fields, Fields::Named(_))
                && !serde.transparent
                && serde.via.is_none();
            return Ok(if section {
                Shape::Struct(def)
            } else {
                Shape::Leaf
            });
        }
        let Some(def) = self.index.r#enum(&name, file)? else {
            return Ok(Shape::Leaf);
        };
        if !attrs::derives(&def.item.attrs, "Deserialize") {
            return Ok(Shape::Leaf);
        }
        let rule = Serde::of(&def.item.attrs).map_err(|e| self.syntax(def.file, e))?;
        // Read through another type (`try_from = "String"`): the variants are not the values.
        if rule.via.is_some() {
            return Ok(Shape::Leaf);
        }
        let mut values = Vec::new();
        let mut family = Vec::new();
        for v in &def.item.variants {
            let serde = Serde::of(&v.attrs).map_err(|e| self.syntax(def.file, e))?;
            if serde.skip {
                continue;
            }
            let key = serde.rename.unwrap_or_else(|| {
                attrs::rename_variant(&v.ident.to_string(), rule.rename_all.as_deref())
            });
            match &v.fields {
                Fields::Unit => values.push(key),
                Fields::Unnamed(f) if f.unnamed.len() == 1 => {
                    match self.shape(&f.unnamed[0].ty, def.file)? {
                        Shape::Struct(s) => family.push((key, s)),
                        _ => return Ok(Shape::Leaf),
                    }
                }
                _ => return Ok(Shape::Leaf),
            }
        }
        Ok(match (values.is_empty(), family.is_empty()) {
            (false, true) => Shape::Values(name, values),
            (true, false) => Shape::Family(family),
            _ => Shape::Leaf,
        })
    }

    fn file(&self, file: usize) -> String {
        self.index.files[file].display().to_string()
    }

    fn syntax(&self, file: usize, e: syn::Error) -> Problem {
        Problem::Syntax {
            file: self.file(file),
            message: e.to_string(),
        }
    }
}

/// What a value of `ty` is made of: the element of a list or an option, the value of a map.
fn element(ty: &Type) -> &Type {
    let inner = match type_name(ty).as_deref() {
        Some("Option" | "Box" | "Vec" | "VecDeque" | "BTreeSet" | "HashSet" | "IndexSet") => {
            generic(ty, 0)
        }
        Some("HashMap" | "BTreeMap" | "IndexMap") => generic(ty, 1),
        _ => None,
    };
    inner.map_or(ty, element)
}

fn is_option(ty: &Type) -> bool {
    type_name(ty).as_deref() == Some("Option")
}

/// A doc comment as the meaning, on one line, and the text of its `Default:` line (with
/// what follows it), if any.
pub(crate) fn split_doc(lines: &[String]) -> (String, Option<String>) {
    let join = |lines: &[String]| {
        lines
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    };
    match lines
        .iter()
        .position(|l| l.trim_start().starts_with("Default:"))
    {
        Some(at) => {
            let stated = join(&lines[at..]);
            let stated = stated.trim_start().trim_start_matches("Default:").trim();
            let stated = stated.strip_suffix('.').unwrap_or(stated).to_string();
            (join(&lines[..at]), Some(stated))
        }
        None => (join(lines), None),
    }
}

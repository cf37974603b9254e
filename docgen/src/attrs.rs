//! What the attributes of a config item say: serde's, the derives and the doc comment.

use syn::meta::ParseNestedMeta;
use syn::{Attribute, Expr, Lit, LitStr, Meta};

/// `#[serde(default)]` or `#[serde(default = "path")]`.
pub(crate) enum SerdeDefault {
    /// The type's `Default`.
    Trait,
    /// A function's result.
    Fn(syn::Path),
}

/// The serde attributes the reference depends on; the others are skipped.
#[derive(Default)]
pub(crate) struct Serde {
    pub rename: Option<String>,
    pub rename_all: Option<String>,
    pub default: Option<SerdeDefault>,
    pub skip: bool,
    pub flatten: bool,
    pub transparent: bool,
    pub with: Option<String>,
    pub deserialize_with: Option<String>,
    /// `from = "T"` or `try_from = "T"` on a container: it is read as a `T`, so its fields'
    /// or variants' names are not what a config file holds.
    pub via: Option<String>,
}

impl Serde {
    pub fn of(attrs: &[Attribute]) -> syn::Result<Self> {
        let mut serde = Serde::default();
        for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
            attr.parse_nested_meta(|meta| {
                let name = meta
                    .path
                    .get_ident()
                    .map(|i| i.to_string())
                    .unwrap_or_default();
                match name.as_str() {
                    "rename" => serde.rename = deserialize_name(&meta)?,
                    "rename_all" => serde.rename_all = deserialize_name(&meta)?,
                    "default" => {
                        serde.default = Some(if meta.input.peek(syn::Token![=]) {
                            SerdeDefault::Fn(meta.value()?.parse::<LitStr>()?.parse()?)
                        } else {
                            SerdeDefault::Trait
                        });
                    }
                    "skip" | "skip_deserializing" => serde.skip = true,
                    "flatten" => serde.flatten = true,
                    "transparent" => serde.transparent = true,
                    "with" => serde.with = Some(meta.value()?.parse::<LitStr>()?.value()),
                    "deserialize_with" => {
                        serde.deserialize_with = Some(meta.value()?.parse::<LitStr>()?.value());
                    }
                    "from" | "try_from" => {
                        serde.via = Some(meta.value()?.parse::<LitStr>()?.value());
                    }
                    _ => skip(&meta)?,
                }
                Ok(())
            })?;
        }
        Ok(serde)
    }

    /// Whether serde reads the value through a function of its own: then a missing
    /// `Option` is an error rather than `None`.
    pub fn custom_deserializer(&self) -> bool {
        self.with.is_some() || self.deserialize_with.is_some()
    }
}

/// `rename = "x"` or `rename(deserialize = "x")`: the name read from a config file.
fn deserialize_name(meta: &ParseNestedMeta) -> syn::Result<Option<String>> {
    if meta.input.peek(syn::Token![=]) {
        return Ok(Some(meta.value()?.parse::<LitStr>()?.value()));
    }
    let mut name = None;
    meta.parse_nested_meta(|inner| {
        if inner.path.is_ident("deserialize") {
            name = Some(inner.value()?.parse::<LitStr>()?.value());
        } else {
            skip(&inner)?;
        }
        Ok(())
    })?;
    Ok(name)
}

/// Consume an attribute argument this crate does not need (`alias = "x"`, `bound(...)`).
fn skip(meta: &ParseNestedMeta) -> syn::Result<()> {
    if meta.input.peek(syn::Token![=]) {
        meta.value()?.parse::<Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        meta.parse_nested_meta(|inner| skip(&inner))?;
    }
    Ok(())
}

/// Whether `#[derive(...)]` lists `name` (`Deserialize`, `Default`).
pub(crate) fn derives(attrs: &[Attribute], name: &str) -> bool {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("derive"))
        .any(|a| {
            a.parse_args_with(
                syn::punctuated::Punctuated::<syn::Path, syn::Token![,]>::parse_terminated,
            )
            .is_ok_and(|paths| {
                paths
                    .iter()
                    .any(|p| p.segments.last().is_some_and(|s| s.ident == name))
            })
        })
}

/// Whether an enum variant carries `#[default]`.
pub(crate) fn is_default_variant(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|a| a.path().is_ident("default"))
}

/// The doc comment's lines, each without the one space after `///`.
pub(crate) fn doc_lines(attrs: &[Attribute]) -> Vec<String> {
    let mut lines = Vec::new();
    for attr in attrs.iter().filter(|a| a.path().is_ident("doc")) {
        if let Meta::NameValue(nv) = &attr.meta
            && let Expr::Lit(lit) = &nv.value
            && let Lit::Str(s) = &lit.lit
        {
            for line in s.value().lines() {
                lines.push(line.strip_prefix(' ').unwrap_or(line).to_string());
            }
        }
    }
    lines
}

/// A field's (snake_case) name as serde's `rename_all = rule` reads it.
pub(crate) fn rename_field(name: &str, rule: Option<&str>) -> String {
    let name = name.strip_prefix("r#").unwrap_or(name);
    match rule {
        Some("lowercase") | Some("snake_case") | None => name.to_string(),
        Some("UPPERCASE") | Some("SCREAMING_SNAKE_CASE") => name.to_ascii_uppercase(),
        Some("kebab-case") => name.replace('_', "-"),
        Some("SCREAMING-KEBAB-CASE") => name.to_ascii_uppercase().replace('_', "-"),
        Some("PascalCase") => pascal(name),
        Some("camelCase") => lower_first(&pascal(name)),
        Some(_) => name.to_string(),
    }
}

/// A variant's (PascalCase) name as serde's `rename_all = rule` reads it.
pub(crate) fn rename_variant(name: &str, rule: Option<&str>) -> String {
    let snake = || {
        let mut out = String::new();
        for (i, c) in name.chars().enumerate() {
            if c.is_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        }
        out
    };
    match rule {
        Some("lowercase") => name.to_ascii_lowercase(),
        Some("UPPERCASE") => name.to_ascii_uppercase(),
        Some("camelCase") => lower_first(name),
        Some("snake_case") => snake(),
        Some("SCREAMING_SNAKE_CASE") => snake().to_ascii_uppercase(),
        Some("kebab-case") => snake().replace('_', "-"),
        Some("SCREAMING-KEBAB-CASE") => snake().to_ascii_uppercase().replace('_', "-"),
        Some(_) | None => name.to_string(),
    }
}

fn pascal(snake: &str) -> String {
    snake
        .split('_')
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_ascii_lowercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_serdes_rename_rules() {
        assert_eq!(
            rename_variant("DropOldest", Some("snake_case")),
            "drop_oldest"
        );
        assert_eq!(
            rename_variant("DropOldest", Some("kebab-case")),
            "drop-oldest"
        );
        assert_eq!(
            rename_variant("DropOldest", Some("lowercase")),
            "dropoldest"
        );
        assert_eq!(rename_variant("DropOldest", None), "DropOldest");
        assert_eq!(rename_field("max_age", Some("camelCase")), "maxAge");
        assert_eq!(rename_field("max_age", Some("PascalCase")), "MaxAge");
        assert_eq!(rename_field("r#type", None), "type");
    }

    #[test]
    fn serde_attributes_are_read_and_others_skipped() {
        let field: syn::Field = syn::parse_quote! {
            #[serde(alias = "old", default = "five", rename(serialize = "a", deserialize = "b"))]
            #[serde(with = "humantime_serde", bound(deserialize = "T: X"))]
            x: u32
        };
        let serde = Serde::of(&field.attrs).expect("parses");
        assert_eq!(serde.rename.as_deref(), Some("b"));
        assert!(matches!(serde.default, Some(SerdeDefault::Fn(_))));
        assert_eq!(serde.with.as_deref(), Some("humantime_serde"));
    }
}

//! Defaults read from the code: the value of a default function, of a field in a
//! hand-written `Default` impl, or of a type's `Default`, rendered as TOML.

use quote::ToTokens;
use syn::{Block, Expr, GenericArgument, Lit, PathArguments, Stmt, Type, UnOp};

use crate::Problem;
use crate::attrs::{self, Serde};
use crate::index::{Index, type_name};

/// A default as far as the code tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Code {
    /// `None`: the key is optional and absent means something the field's doc says.
    None,
    /// An empty list, table or string: as `None`, the doc may say what it means.
    Empty(String),
    /// A value, as TOML.
    Value(String),
    /// Code this crate cannot render (the source text, for the error).
    Opaque(String),
}

/// What a field's value is read as, for the units of its default.
#[derive(Clone, Copy)]
pub(crate) struct Context<'a> {
    /// The field's type, for `Default::default()`, `Vec::new()`, `Some(...)`.
    pub ty: &'a Type,
    /// Durations are written as strings only through `humantime_serde`.
    pub humantime: bool,
    /// The file the expression is in: names are resolved from there.
    pub file: usize,
    /// The type `Self` stands for.
    pub self_ty: Option<&'a str>,
}

/// Renders defaults, resolving functions, constants and enums through the index.
pub(crate) struct Renderer<'a> {
    pub index: &'a Index,
}

impl Renderer<'_> {
    /// The value of `#[serde(default = "path")]`.
    pub fn function(&self, path: &syn::Path, cx: Context) -> Result<Code, Problem> {
        let key = item_key(path, cx.self_ty);
        match self.index.r#fn(&key, cx.file)? {
            Some(def) => self.block(
                &def.item,
                Context {
                    file: def.file,
                    ..cx
                },
            ),
            None => Ok(Code::Opaque(format!("{key}() (function not found)"))),
        }
    }

    /// The field `field` of the `Self { .. }` that `impl Default for ty_name` returns;
    /// `None` without such an impl.
    pub fn field_of_default_impl(
        &self,
        ty_name: &str,
        field: &str,
        cx: Context,
    ) -> Result<Option<Code>, Problem> {
        Ok(match self.index.default_impl(ty_name, cx.file)? {
            Some(def) => Some(self.struct_field(
                &def.item,
                ty_name,
                field,
                Context {
                    file: def.file,
                    ..cx
                },
            )?),
            None => None,
        })
    }

    /// The field `field` of the struct that `#[serde(default = "path")]` on a container
    /// returns.
    pub fn field_of_function(
        &self,
        path: &syn::Path,
        ty_name: &str,
        field: &str,
        cx: Context,
    ) -> Result<Code, Problem> {
        let key = item_key(path, Some(ty_name));
        match self.index.r#fn(&key, cx.file)? {
            Some(def) => self.struct_field(
                &def.item,
                ty_name,
                field,
                Context {
                    file: def.file,
                    ..cx
                },
            ),
            None => Ok(Code::Opaque(format!("{key}() (function not found)"))),
        }
    }

    fn struct_field(
        &self,
        block: &Block,
        ty_name: &str,
        field: &str,
        cx: Context,
    ) -> Result<Code, Problem> {
        let cx = Context {
            self_ty: Some(ty_name),
            ..cx
        };
        let Some(Expr::Struct(lit)) = tail(block) else {
            return Ok(Code::Opaque(format!("{ty_name}::default()")));
        };
        let found = lit.fields.iter().find(|f| match &f.member {
            syn::Member::Named(ident) => ident == field,
            syn::Member::Unnamed(_) => false,
        });
        match found {
            Some(f) => self.expr(&f.expr, cx),
            None => Ok(Code::Opaque(format!("{ty_name}::default().{field}"))),
        }
    }

    /// What `Default::default()` gives for the context's type.
    pub fn type_default(&self, cx: Context) -> Result<Code, Problem> {
        let Some(name) = type_name(cx.ty) else {
            return Ok(Code::Opaque(tokens(cx.ty)));
        };
        Ok(match name.as_str() {
            "Option" => Code::None,
            "Vec" | "VecDeque" | "HashSet" | "BTreeSet" | "IndexSet" => Code::Empty("[]".into()),
            "HashMap" | "BTreeMap" | "IndexMap" | "Table" | "Map" => Code::Empty("{}".into()),
            "String" | "PathBuf" => Code::Empty("\"\"".into()),
            "bool" => Code::Value("false".into()),
            "u8" | "u16" | "u32" | "u64" | "u128" | "usize" | "i8" | "i16" | "i32" | "i64"
            | "i128" | "isize" => Code::Value("0".into()),
            "f32" | "f64" => Code::Value("0.0".into()),
            "Duration" => self.duration(0, cx),
            "ByteSize" => Code::Value("\"0B\"".into()),
            _ => return self.named_type_default(&name, cx),
        })
    }

    fn named_type_default(&self, name: &str, cx: Context) -> Result<Code, Problem> {
        if let Some(def) = self.index.r#enum(name, cx.file)? {
            let rule = Serde::of(&def.item.attrs).map_err(|e| syntax(self.index, def.file, e))?;
            if let Some(via) = &rule.via {
                return Ok(read_via(name, via));
            }
            if let Some(v) = def
                .item
                .variants
                .iter()
                .find(|v| attrs::is_default_variant(&v.attrs))
            {
                return self.variant_value(v, rule.rename_all.as_deref(), def.file);
            }
            if let Some(imp) = self.index.default_impl(name, def.file)?
                && let Some(e) = tail(&imp.item)
            {
                let cx = Context {
                    file: imp.file,
                    self_ty: Some(name),
                    ..cx
                };
                return self.expr(e, cx);
            }
        }
        if let Some(def) = self.index.r#struct(name, cx.file)? {
            let serde = Serde::of(&def.item.attrs).map_err(|e| syntax(self.index, def.file, e))?;
            // A transparent newtype (`Options(BTreeMap<..>)`) defaults as what it wraps.
            if serde.transparent
                && let Some(inner) = def.item.fields.iter().next()
            {
                let cx = Context {
                    ty: &inner.ty,
                    file: def.file,
                    ..cx
                };
                return self.type_default(cx);
            }
        }
        Ok(Code::Opaque(format!("{name}::default()")))
    }

    fn variant_value(
        &self,
        v: &syn::Variant,
        rule: Option<&str>,
        file: usize,
    ) -> Result<Code, Problem> {
        let serde = Serde::of(&v.attrs).map_err(|e| syntax(self.index, file, e))?;
        let name = serde
            .rename
            .unwrap_or_else(|| attrs::rename_variant(&v.ident.to_string(), rule));
        Ok(Code::Value(toml_string(&name)))
    }

    fn block(&self, block: &Block, cx: Context) -> Result<Code, Problem> {
        match tail(block) {
            Some(e) => self.expr(e, cx),
            None => Ok(Code::Opaque(tokens(block))),
        }
    }

    /// Render an expression, as far as it is one of the shapes defaults are written in.
    pub fn expr(&self, e: &Expr, cx: Context) -> Result<Code, Problem> {
        let opaque = || Ok(Code::Opaque(tokens(e)));
        match e {
            Expr::Paren(p) => self.expr(&p.expr, cx),
            Expr::Group(g) => self.expr(&g.expr, cx),
            Expr::Block(b) => self.block(&b.block, cx),
            Expr::Lit(lit) => {
                Ok(literal(&lit.lit).map_or_else(|| Code::Opaque(tokens(e)), Code::Value))
            }
            Expr::Unary(u) if matches!(u.op, UnOp::Neg(_)) => match self.expr(&u.expr, cx)? {
                Code::Value(v) => Ok(Code::Value(format!("-{v}"))),
                _ => opaque(),
            },
            Expr::Call(call) => {
                let Expr::Path(func) = &*call.func else {
                    return opaque();
                };
                let segs: Vec<String> = func
                    .path
                    .segments
                    .iter()
                    .map(|s| s.ident.to_string())
                    .collect();
                let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
                let args: Vec<&Expr> = call.args.iter().collect();
                match (segs.as_slice(), args.as_slice()) {
                    (["Some"], [inner]) => {
                        let ty = generic(cx.ty, 0).unwrap_or(cx.ty);
                        self.expr(inner, Context { ty, ..cx })
                    }
                    ([.., "Duration", unit], [n]) => match (self.int(n, cx)?, nanos_per(unit)) {
                        (Some(n), Some(per)) => n
                            .checked_mul(per)
                            .map_or_else(opaque, |nanos| Ok(self.duration(nanos, cx))),
                        _ => opaque(),
                    },
                    ([.., "ByteSize", unit], [n]) => match (self.int(n, cx)?, byte_unit(unit)) {
                        (Some(n), Some("")) => Ok(Code::Value(format_bytes(n))),
                        (Some(n), Some(suffix)) => Ok(Code::Value(format!("\"{n}{suffix}\""))),
                        _ => opaque(),
                    },
                    ([.., "ByteSize"], [n]) => Ok(self
                        .int(n, cx)?
                        .map_or_else(|| Code::Opaque(tokens(e)), |n| Code::Value(format_bytes(n)))),
                    ([.., "String" | "PathBuf" | "Box" | "Arc", "from"], [s]) => self.expr(s, cx),
                    ([.., "default" | "new"], []) => self.type_default(cx),
                    _ => opaque(),
                }
            }
            Expr::MethodCall(call)
                if call.args.is_empty()
                    && matches!(
                        call.method.to_string().as_str(),
                        "into" | "to_string" | "to_owned" | "into_boxed_str"
                    ) =>
            {
                match &*call.receiver {
                    Expr::Lit(lit) if matches!(lit.lit, Lit::Str(_)) => {
                        self.expr(&call.receiver, cx)
                    }
                    _ => opaque(),
                }
            }
            Expr::Macro(m) if m.mac.path.is_ident("vec") && m.mac.tokens.is_empty() => {
                Ok(Code::Empty("[]".into()))
            }
            Expr::Path(p) => self.path(&p.path, cx),
            _ => opaque(),
        }
    }

    /// `None`, a constant, `Duration::ZERO` or an enum variant.
    fn path(&self, path: &syn::Path, cx: Context) -> Result<Code, Problem> {
        let segs: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        let opaque = Code::Opaque(tokens(path));
        match segs
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["None"] => return Ok(Code::None),
            [.., "Duration", "ZERO"] => return Ok(self.duration(0, cx)),
            _ => {}
        }
        let key = item_key(path, cx.self_ty);
        if let Some(def) = self.index.r#const(&key, cx.file)? {
            let cx = Context {
                file: def.file,
                ..cx
            };
            return self.expr(&def.item, cx);
        }
        // `Enum::Variant`, `Self::Variant` inside the enum's own impl.
        if let [.., ty, variant] = segs.as_slice() {
            let ty = if ty == "Self" {
                cx.self_ty.unwrap_or(ty)
            } else {
                ty
            };
            if let Some(def) = self.index.r#enum(ty, cx.file)? {
                let rule =
                    Serde::of(&def.item.attrs).map_err(|e| syntax(self.index, def.file, e))?;
                if let Some(via) = &rule.via {
                    return Ok(read_via(ty, via));
                }
                if let Some(v) = def.item.variants.iter().find(|v| v.ident == variant) {
                    return self.variant_value(v, rule.rename_all.as_deref(), def.file);
                }
            }
        }
        Ok(opaque)
    }

    /// An integer written as literals, constants and arithmetic (`64 << 20`, `5 * 60`,
    /// `DEFAULT_MAX as u64`); `None` for anything else.
    fn int(&self, e: &Expr, cx: Context) -> Result<Option<u128>, Problem> {
        Ok(match e {
            Expr::Lit(lit) => match &lit.lit {
                Lit::Int(i) => i.base10_parse().ok(),
                _ => None,
            },
            Expr::Paren(p) => self.int(&p.expr, cx)?,
            Expr::Group(g) => self.int(&g.expr, cx)?,
            Expr::Cast(c) => self.int(&c.expr, cx)?,
            Expr::Path(p) => match self
                .index
                .r#const(&item_key(&p.path, cx.self_ty), cx.file)?
            {
                Some(def) => self.int(
                    &def.item,
                    Context {
                        file: def.file,
                        ..cx
                    },
                )?,
                None => None,
            },
            Expr::Binary(b) => {
                let (Some(l), Some(r)) = (self.int(&b.left, cx)?, self.int(&b.right, cx)?) else {
                    return Ok(None);
                };
                match b.op {
                    syn::BinOp::Add(_) => l.checked_add(r),
                    syn::BinOp::Sub(_) => l.checked_sub(r),
                    syn::BinOp::Mul(_) => l.checked_mul(r),
                    syn::BinOp::Div(_) => l.checked_div(r),
                    syn::BinOp::Shl(_) => u32::try_from(r).ok().and_then(|r| l.checked_shl(r)),
                    _ => None,
                }
            }
            _ => None,
        })
    }

    fn duration(&self, nanos: u128, cx: Context) -> Code {
        if cx.humantime {
            Code::Value(format!("\"{}\"", format_duration(nanos)))
        } else {
            // Without humantime_serde a duration is `{ secs, nanos }`: say it rather than guess.
            Code::Opaque(format!(
                "a Duration of {} without humantime_serde",
                format_duration(nanos)
            ))
        }
    }
}

/// The default of an enum read through another type: its variant's name is not the value
/// a config file holds (`Schedule::OnChange` is written `"on_change"`), so it is not shown.
fn read_via(ty: &str, via: &str) -> Code {
    Code::Opaque(format!("{ty}::default() (read from a {via})"))
}

/// The key of a function or constant in the index: `name`, or `Type::name`.
fn item_key(path: &syn::Path, self_ty: Option<&str>) -> String {
    let segs: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
    match segs.as_slice() {
        [.., ty, name] if ty.starts_with(char::is_uppercase) => {
            let ty = if ty == "Self" {
                self_ty.unwrap_or(ty)
            } else {
                ty
            };
            format!("{ty}::{name}")
        }
        [.., name] => name.clone(),
        [] => String::new(),
    }
}

/// The expression a block evaluates to, when it is nothing but that expression.
fn tail(block: &Block) -> Option<&Expr> {
    match block.stmts.as_slice() {
        [Stmt::Expr(e, None)] => Some(e),
        _ => None,
    }
}

/// The `i`th generic argument of a type (`Option<T>` → `T`).
pub(crate) fn generic(ty: &Type, i: usize) -> Option<&Type> {
    let Type::Path(p) = ty else {
        return None;
    };
    let PathArguments::AngleBracketed(args) = &p.path.segments.last()?.arguments else {
        return None;
    };
    args.args
        .iter()
        .filter_map(|a| match a {
            GenericArgument::Type(t) => Some(t),
            _ => None,
        })
        .nth(i)
}

fn literal(lit: &Lit) -> Option<String> {
    match lit {
        Lit::Int(i) => Some(i.base10_digits().to_string()),
        Lit::Float(f) => {
            let digits = f.base10_digits();
            Some(if digits.contains(['.', 'e', 'E']) {
                digits.to_string()
            } else {
                format!("{digits}.0")
            })
        }
        Lit::Bool(b) => Some(b.value.to_string()),
        Lit::Str(s) => Some(toml_string(&s.value())),
        _ => None,
    }
}

fn nanos_per(unit: &str) -> Option<u128> {
    Some(match unit {
        "from_secs" => 1_000_000_000,
        "from_millis" => 1_000_000,
        "from_micros" => 1_000,
        "from_nanos" => 1,
        "from_mins" => 60_000_000_000,
        "from_hours" => 3_600_000_000_000,
        _ => return None,
    })
}

/// The unit suffix of a `ByteSize` constructor; `""` for plain bytes.
fn byte_unit(ctor: &str) -> Option<&'static str> {
    Some(match ctor {
        "b" => "",
        "kb" => "KB",
        "mb" => "MB",
        "gb" => "GB",
        "tb" => "TB",
        "kib" => "KiB",
        "mib" => "MiB",
        "gib" => "GiB",
        "tib" => "TiB",
        _ => return None,
    })
}

/// A duration in the largest unit that holds it exactly: `30s`, `5m`, `100ms`.
fn format_duration(nanos: u128) -> String {
    const UNITS: [(&str, u128); 7] = [
        ("d", 86_400_000_000_000),
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ];
    if nanos == 0 {
        return "0s".into();
    }
    UNITS
        .iter()
        .find(|(_, per)| nanos.is_multiple_of(*per))
        .map(|(unit, per)| format!("{}{unit}", nanos / per))
        .unwrap_or_default()
}

/// A number of bytes: in the largest binary unit that holds it exactly (`"16MiB"`), or as a
/// plain number below 1 KiB or when none does.
fn format_bytes(n: u128) -> String {
    const UNITS: [(&str, u128); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    UNITS
        .iter()
        .find(|(_, per)| n >= *per && n.is_multiple_of(*per))
        .map_or_else(
            || n.to_string(),
            |(unit, per)| format!("\"{}{unit}\"", n / per),
        )
}

/// A TOML basic string.
pub(crate) fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub(crate) fn tokens(t: &impl ToTokens) -> String {
    t.to_token_stream().to_string()
}

fn syntax(index: &Index, file: usize, e: syn::Error) -> Problem {
    Problem::Syntax {
        file: index.files[file].display().to_string(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_their_largest_exact_unit() {
        assert_eq!(format_duration(30_000_000_000), "30s");
        assert_eq!(format_duration(300_000_000_000), "5m");
        assert_eq!(format_duration(1_500_000_000), "1500ms");
        assert_eq!(format_duration(0), "0s");
    }

    #[test]
    fn byte_counts_take_their_largest_exact_unit() {
        assert_eq!(format_bytes(16 << 20), "\"16MiB\"");
        assert_eq!(format_bytes(1536), "1536");
        assert_eq!(format_bytes(512), "512");
    }
}

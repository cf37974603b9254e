//! The tables of `docs/CONFIGURATION.md`, generated from the config structs' source.
//!
//! A [`Reference`] names a root struct (`AgentConfig`) and the source directories its types
//! live in. The sources are parsed with `syn` (not compiled in), and the types are followed
//! from the root, honouring serde's attributes:
//!
//! - a field whose type is a config struct (a `Deserialize` struct with named fields, not
//!   `transparent`), directly or in an `Option`, `Box`, `Vec` or map, is a section of its
//!   own, `PARENT.KEY`; `#[serde(flatten)]` puts its keys into the parent instead;
//! - a field whose type is an enum whose variants each wrap a config struct (the
//!   `{ type = "..." }` tables read by `sluice_ops::config::tagged::{one, map}`) gives one
//!   section per variant, `PARENT.KEY.VARIANT` (`agent.sources.wasm`);
//! - any other field is a row: its key (`rename`, `rename_all`), its default and its
//!   meaning. Fields with `#[serde(skip)]` are not shown.
//!
//! The meaning is the field's doc comment on one line; a field without one is refused,
//! naming struct and field. A field whose type is an enum of unit variants (or a list of
//! them) must name each allowed value in its doc comment, as `` `value` `` or `"value"`, so
//! a new variant cannot go undocumented. A type read through another one
//! (`#[serde(try_from = "String")]`, `from`) is neither a section nor a list of values: its
//! fields and variants are not what the file holds, so its default needs a `Default:` line.
//!
//! The default comes from the code: `#[serde(default = "f")]` renders `f`'s body
//! (`Duration::from_secs(5)` → `"5s"` with `humantime_serde`, `ByteSize::mib(8)` →
//! `"8MiB"`, literals, `"x".into()` → `"x"`, constants, enum variants); a container's
//! `#[serde(default)]` takes the field from its hand-written `impl Default` (or the type's
//! default with a derived one); a missing `Option` is `none`; otherwise the key is
//! `required`. **Convention:** where the code's default is `None`, empty or not renderable
//! (computed elsewhere), the doc comment's last line(s) may say it, starting with
//! `Default:` (`/// Default: the endpoint's host.`): that text, as markdown without its final
//! period, is shown, and is not part of the meaning. A `Default:` line on a key whose code
//! gives a value, or none (required), is refused, so the two cannot disagree.
//!
//! In the document, each table sits between `<!-- generated: ID -->` and
//! `<!-- end generated -->`; everything else is left alone. Every section with keys needs
//! exactly one such block. Names are resolved without following `use`s: a type, function or
//! constant is looked up in the same file first, then must be unique among the sources.

mod attrs;
mod default;
mod index;
mod markdown;
mod model;

use std::path::{Path, PathBuf};

pub use markdown::{Stale, Update, table};

/// A config file documented in the reference: its root struct and where its types live.
#[derive(Debug, Clone, Copy)]
pub struct Reference {
    /// First part of its sections' ids (`agent` in `agent.batch`).
    pub name: &'static str,
    /// The struct the whole file deserializes into.
    pub root: &'static str,
    /// Directories (relative to the repository) whose `.rs` files hold its types.
    pub sources: &'static [&'static str],
}

/// The agent's config file.
pub const AGENT: Reference = Reference {
    name: "agent",
    root: "AgentConfig",
    sources: &["agent/src", "simulator/src", "ops/src"],
};

/// The processor's config file.
pub const PROCESSOR: Reference = Reference {
    name: "processor",
    root: "ProcessorConfig",
    sources: &["processor/src", "ops/src", "protocol/src"],
};

/// Every config file the reference documents. Adding one takes its `Reference` here and a
/// generated block in the document for each of its sections.
pub const REFERENCES: &[Reference] = &[AGENT, PROCESSOR];

/// The document holding the tables, relative to the repository.
pub const DOC: &str = "docs/CONFIGURATION.md";

/// One table: the keys of one TOML table of a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// `NAME.KEY...` (`agent.batch`, `agent.sink.kafka`).
    pub id: String,
    /// The keys, in field order.
    pub rows: Vec<Row>,
}

/// One key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The key as written in TOML.
    pub key: String,
    /// Its default.
    pub default: DefaultValue,
    /// Its doc comment, on one line.
    pub meaning: String,
}

/// A key's default, as the table shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefaultValue {
    /// No default: the key must be given.
    Required,
    /// An `Option` left out.
    None,
    /// A TOML value (`65536`, `"8MiB"`, `[]`), shown as code.
    Literal(String),
    /// The text of a `Default:` line, shown as it is.
    Text(String),
}

/// Why the reference could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A source file is not Rust `syn` can parse.
    #[error("{path}: cannot parse: {message}")]
    Parse {
        /// The source file.
        path: PathBuf,
        /// `syn`'s message.
        message: String,
    },
    /// The config types cannot be documented as they are.
    #[error("the config structs of `{reference}` cannot be documented:\n{}", list(.problems))]
    Code {
        /// [`Reference::name`] of the reference refused.
        reference: String,
        /// Every problem found, in the order the types were followed; never empty.
        problems: Vec<Problem>,
    },
    /// The document's generated blocks do not fit the sections.
    #[error("{path}:\n{}", list(.problems))]
    Doc {
        /// The document.
        path: PathBuf,
        /// One line per fault (a section without a block, a block without a section, a
        /// second or unclosed block), with its line number when it has one; never empty.
        problems: Vec<String>,
    },
}

fn list(items: &[impl std::fmt::Display]) -> String {
    items
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Something in the config types the generator refuses, named so it can be fixed there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// A shown field without a doc comment.
    #[error("{file}: `{strukt}.{field}` has no doc comment (it is the key's meaning)")]
    Undocumented {
        /// The config struct, as named in the source.
        strukt: String,
        /// The field, as named in Rust (not its TOML key).
        field: String,
        /// The struct's source file, relative to the repository.
        file: String,
    },
    /// A default in code the generator does not read, and no `Default:` line.
    #[error(
        "{file}: the default of `{strukt}.{field}` cannot be rendered from `{code}`; \
         say it in a last doc line `Default: ...`"
    )]
    Unrenderable {
        /// The config struct, as named in the source.
        strukt: String,
        /// The field, as named in Rust (not its TOML key).
        field: String,
        /// The struct's source file, relative to the repository.
        file: String,
        /// The default's code as written (the function's body).
        code: String,
    },
    /// A `Default:` line on a field whose code gives a value or none (required).
    #[error(
        "{file}: `{strukt}.{field}` has a `Default:` line but the code says {code}; \
         remove the line, the code's default is shown"
    )]
    Overridden {
        /// The config struct, as named in the source.
        strukt: String,
        /// The field, as named in Rust (not its TOML key).
        field: String,
        /// The struct's source file, relative to the repository.
        file: String,
        /// What the code gives instead: its rendered default, or that the key is required.
        code: String,
    },
    /// An allowed value of an enum-typed field that its doc comment does not name.
    #[error(
        "{file}: the doc comment of `{strukt}.{field}` does not name the value `{value}` of `{ty}`"
    )]
    ValueNotMentioned {
        /// The config struct, as named in the source.
        strukt: String,
        /// The field, as named in Rust (not its TOML key).
        field: String,
        /// The struct's source file, relative to the repository.
        file: String,
        /// The field's enum type.
        ty: String,
        /// The value not named, as written in TOML.
        value: String,
    },
    /// A flattened field that is not a config struct.
    #[error("{file}: `#[serde(flatten)]` on `{strukt}.{field}`, whose type is not a config struct")]
    Flatten {
        /// The config struct, as named in the source.
        strukt: String,
        /// The field, as named in Rust (not its TOML key).
        field: String,
        /// The struct's source file, relative to the repository.
        file: String,
    },
    /// A name defined in several files, none of them the one that uses it.
    #[error("`{name}` (needed by {wanted_in}) is defined in several files: {}", .files.join(", "))]
    Ambiguous {
        /// The type, function or constant looked up.
        name: String,
        /// The file whose code names it, or "the reference's root".
        wanted_in: String,
        /// Every file defining it, relative to the repository.
        files: Vec<String>,
    },
    /// The reference's root struct is not in its sources.
    #[error("the root struct `{name}` is not in the sources")]
    RootNotFound {
        /// [`Reference::root`].
        name: String,
    },
    /// A config struct reachable from itself.
    #[error("the config struct `{name}` contains itself")]
    Cycle {
        /// The struct met again while following its own fields.
        name: String,
    },
    /// A serde attribute that does not parse.
    #[error("{file}: {message}")]
    Syntax {
        /// The file holding the attribute, relative to the repository.
        file: String,
        /// `syn`'s message.
        message: String,
    },
}

/// The sections of `reference`, from the sources under `repo`.
pub fn sections(repo: &Path, reference: &Reference) -> Result<Vec<Section>, Error> {
    let mut files = Vec::new();
    for dir in reference.sources {
        rust_files(repo, Path::new(dir), &mut files)?;
    }
    let texts = files
        .into_iter()
        .map(|rel| {
            let path = repo.join(&rel);
            std::fs::read_to_string(&path)
                .map(|text| (rel, text))
                .map_err(|source| Error::Io { path, source })
        })
        .collect::<Result<Vec<_>, _>>()?;
    sections_of(texts, reference)
}

/// The sections of `reference`, from source texts given with the paths messages name.
pub fn sections_of(
    texts: Vec<(PathBuf, String)>,
    reference: &Reference,
) -> Result<Vec<Section>, Error> {
    let parsed = texts
        .into_iter()
        .map(|(path, text)| match syn::parse_file(&text) {
            Ok(ast) => Ok((path, ast)),
            Err(e) => Err(Error::Parse {
                path,
                message: e.to_string(),
            }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let index = index::Index::new(parsed);
    model::sections(&index, reference.name, reference.root).map_err(|problems| Error::Code {
        reference: reference.name.to_string(),
        problems,
    })
}

/// The document under `repo` as the code says it should be, and what differs now.
pub fn compare(repo: &Path) -> Result<Update, Error> {
    let mut all = Vec::new();
    for reference in REFERENCES {
        all.extend(sections(repo, reference)?);
    }
    let path = repo.join(DOC);
    let doc = std::fs::read_to_string(&path).map_err(|source| Error::Io {
        path: path.clone(),
        source,
    })?;
    markdown::update(&doc, &all).map_err(|problems| Error::Doc { path, problems })
}

/// The `.rs` files under `repo/dir`, relative to `repo`, sorted.
fn rust_files(repo: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), Error> {
    let full = repo.join(dir);
    let io = |source| Error::Io {
        path: full.clone(),
        source,
    };
    let mut entries = std::fs::read_dir(&full)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io)?;
    entries.sort();
    for path in entries {
        let Some(name) = path.file_name() else {
            continue;
        };
        let rel = dir.join(name);
        if path.is_dir() {
            rust_files(repo, &rel, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(rel);
        }
    }
    Ok(())
}

//! `sluice-agent plugin new`: a connector project that builds and passes `plugin check` as
//! generated. The WIT package (and, for Rust, the SDK) is copied in, so the project builds
//! anywhere.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

const WIT: &str = include_str!("../../../wit/v0.3/plugin.wit");
const SDK_LIB: &str = include_str!("../../../plugins/sdk-rust/src/lib.rs");
const SDK_ROWS: &str = include_str!("../../../plugins/sdk-rust/src/rows.rs");
const SDK_NET: &str = include_str!("../../../plugins/sdk-rust/src/net.rs");
const SDK_CARGO: &str = include_str!("../../templates/sdk_Cargo.toml");
const RUST_LIB: &str = include_str!("../../templates/rust_lib.rs");
const RUST_CARGO: &str = include_str!("../../templates/rust_Cargo.toml");
const PYTHON_APP: &str = include_str!("../../templates/python_app.py");
const JS_APP: &str = include_str!("../../templates/js_app.js");
const JS_PACKAGE: &str = include_str!("../../templates/js_package.json");

/// Languages `plugin new` scaffolds.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Lang {
    /// A cargo project with a copy of the Rust SDK, built for `wasm32-wasip2`.
    Rust,
    /// An `app.py` built with componentize-py.
    Python,
    /// JavaScript: an `app.js` built with componentize-js through npm.
    Js,
}

/// Create `dir/name` for a connector in `lang`; returns the directory and how to build it.
pub fn create(lang: Lang, name: &str, dir: &Path) -> anyhow::Result<(PathBuf, String)> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !ok {
        bail!("{name:?}: use 1-64 lowercase letters, digits, '_' or '-', starting with a letter");
    }
    let root = dir.join(name);
    if root.exists() {
        bail!("{} already exists", root.display());
    }
    let fill = |t: &str| t.replace("{{name}}", name);
    let write = |rel: &str, text: &str| -> anyhow::Result<()> {
        let p = root.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))
    };
    write("wit/plugin.wit", WIT)?;
    let build = match lang {
        Lang::Rust => {
            write("Cargo.toml", &fill(RUST_CARGO))?;
            write("src/lib.rs", &fill(RUST_LIB))?;
            write("sluice-plugin/Cargo.toml", SDK_CARGO)?;
            // The SDK in the repository finds the WIT two levels up; here it is one.
            write(
                "sluice-plugin/src/lib.rs",
                &SDK_LIB.replace("path: \"../../wit/v0.3\"", "path: \"../wit\""),
            )?;
            write("sluice-plugin/src/rows.rs", SDK_ROWS)?;
            write("sluice-plugin/src/net.rs", SDK_NET)?;
            write(".gitignore", "target/\n")?;
            format!(
                "rustup target add wasm32-wasip2 && cargo build --release --target wasm32-wasip2\n\
                 # -> target/wasm32-wasip2/release/{}.wasm",
                name.replace('-', "_")
            )
        }
        Lang::Python => {
            write("app.py", &fill(PYTHON_APP))?;
            write(".gitignore", "*.wasm\n__pycache__/\n")?;
            format!(
                "pip install componentize-py==0.25.1 && \
                 componentize-py -d wit -w source componentize app -o {name}.wasm"
            )
        }
        Lang::Js => {
            write("app.js", &fill(JS_APP))?;
            write("package.json", &fill(JS_PACKAGE))?;
            write(".gitignore", "node_modules/\n*.wasm\n")?;
            "npm install && npm run build".to_string()
        }
    };
    write(
        "README.md",
        &format!(
            "# {name}\n\nA Sluice source connector. Build:\n\n```sh\n{build}\n```\n\n\
             Check it: `sluice-agent plugin check <file>.wasm`. Writing connectors: \
             docs/PLUGINS.md in the Sluice repository.\n"
        ),
    )?;
    Ok((root, build))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sdk_states_the_checkpoint_limit_the_agent_keeps() {
        let said = format!(
            "pub const MAX_CHECKPOINT_BYTES: usize = {};",
            sluice_protocol::MAX_CHECKPOINT_BYTES
        );
        assert!(
            SDK_LIB.contains(&said),
            "the SDK's limit differs from {said}"
        );
    }
}

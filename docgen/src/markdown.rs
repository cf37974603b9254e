//! The tables as markdown, and the document's generated blocks replaced by them.

use std::collections::HashSet;

use crate::{DefaultValue, Section};

const START: &str = "<!-- generated: ";
const END: &str = "<!-- end generated -->";

/// The document with every generated block as the code says, and the blocks that differed.
#[derive(Debug)]
pub struct Update {
    /// The whole new document.
    pub text: String,
    /// The blocks whose text changes, in document order.
    pub stale: Vec<Stale>,
}

/// One generated block that does not match the code.
#[derive(Debug)]
pub struct Stale {
    /// The section's id (`agent.batch`).
    pub id: String,
    /// The block in the document.
    pub old: String,
    /// The block as generated.
    pub new: String,
}

impl Stale {
    /// The changed lines: `-` as the document has them, `+` as the code says.
    pub fn diff(&self) -> String {
        let old: Vec<&str> = self.old.lines().collect();
        let new: Vec<&str> = self.new.lines().collect();
        // Longest common subsequence; tables are a few dozen lines.
        let mut lcs = vec![vec![0usize; new.len() + 1]; old.len() + 1];
        for i in (0..old.len()).rev() {
            for j in (0..new.len()).rev() {
                lcs[i][j] = if old[i] == new[j] {
                    lcs[i + 1][j + 1] + 1
                } else {
                    lcs[i + 1][j].max(lcs[i][j + 1])
                };
            }
        }
        let (mut i, mut j, mut out) = (0, 0, String::new());
        while i < old.len() || j < new.len() {
            if i < old.len() && j < new.len() && old[i] == new[j] {
                i += 1;
                j += 1;
            } else if i < old.len() && (j == new.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
                out.push_str(&format!("- {}\n", old[i]));
                i += 1;
            } else {
                out.push_str(&format!("+ {}\n", new[j]));
                j += 1;
            }
        }
        out
    }
}

impl Update {
    /// What is out of date, with each section's diff, for a failing check.
    pub fn report(&self, doc: &str) -> String {
        let ids: Vec<&str> = self.stale.iter().map(|s| s.id.as_str()).collect();
        let mut out = format!(
            "{doc} differs from the code in {} section(s): {}\n",
            ids.len(),
            ids.join(", ")
        );
        for stale in &self.stale {
            out.push_str(&format!("\n{}:\n{}", stale.id, stale.diff()));
        }
        out.push_str(
            "\nRun `cargo run -p sluice-docgen` to rewrite the tables from the code \
             (meanings and defaults live in the config structs' doc comments).\n",
        );
        out
    }
}

/// A section's table.
pub fn table(section: &Section) -> String {
    let mut out = String::from("| key | default | meaning |\n|---|---|---|\n");
    for row in &section.rows {
        let default = match &row.default {
            DefaultValue::Required => "required".to_string(),
            DefaultValue::None => "none".to_string(),
            DefaultValue::Literal(v) => format!("`{v}`"),
            DefaultValue::Text(t) => t.clone(),
        };
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            row.key,
            cell(&default),
            cell(&row.meaning)
        ));
    }
    out
}

/// A table cell: pipes escaped, even inside code spans (GitHub splits cells on them first).
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// Replace the block between each `<!-- generated: ID -->` and `<!-- end generated -->`
/// with section `ID`'s table. Every section must have exactly one block and every block a
/// section; the problems found are returned otherwise, with line numbers.
pub fn update(doc: &str, sections: &[Section]) -> Result<Update, Vec<String>> {
    let mut problems = Vec::new();
    let mut out: Vec<String> = Vec::new();
    let mut stale = Vec::new();
    let mut seen = HashSet::new();
    // The open block: its id, its start line and the lines it holds now.
    let mut open: Option<(String, usize, Vec<&str>)> = None;
    for (n, line) in doc.split('\n').enumerate() {
        let trimmed = line.trim();
        let start = trimmed
            .strip_prefix(START)
            .and_then(|rest| rest.strip_suffix("-->"))
            .map(|id| id.trim().to_string());
        match (&mut open, start) {
            (Some((id, at, _)), Some(_)) => {
                problems.push(format!(
                    "line {}: a generated block starts inside `{id}` (opened on line {})",
                    n + 1,
                    *at + 1
                ));
            }
            (None, Some(id)) => {
                out.push(line.to_string());
                if !seen.insert(id.clone()) {
                    problems.push(format!("line {}: a second block for `{id}`", n + 1));
                }
                open = Some((id, n, Vec::new()));
            }
            (Some(_), None) if trimmed == END => {
                if let Some((id, at, lines)) = open.take() {
                    let old = lines.join("\n");
                    match sections.iter().find(|s| s.id == id) {
                        Some(section) => {
                            let new = format!("\n{}", table(section));
                            if old != new {
                                stale.push(Stale {
                                    id,
                                    old: old.clone(),
                                    new: new.clone(),
                                });
                            }
                            out.push(new);
                        }
                        None => {
                            problems.push(format!(
                                "line {}: no config section `{id}` (known: {})",
                                at + 1,
                                sections
                                    .iter()
                                    .map(|s| s.id.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ));
                            out.push(old);
                        }
                    }
                    out.push(line.to_string());
                }
            }
            (Some((_, _, lines)), None) => lines.push(line),
            (None, None) if trimmed == END => {
                problems.push(format!("line {}: `{END}` without a block open", n + 1));
            }
            (None, None) => out.push(line.to_string()),
        }
    }
    if let Some((id, at, _)) = open {
        problems.push(format!("line {}: the block `{id}` is never closed", at + 1));
    }
    for section in sections.iter().filter(|s| !seen.contains(&s.id)) {
        problems.push(format!(
            "section `{}` has no block: add `{START}{} -->` and `{END}` where its table goes",
            section.id, section.id
        ));
    }
    if problems.is_empty() {
        Ok(Update {
            text: out.join("\n"),
            stale,
        })
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Row;

    fn section(id: &str, default: DefaultValue) -> Section {
        Section {
            id: id.into(),
            rows: vec![Row {
                key: "k".into(),
                default,
                meaning: "a | b".into(),
            }],
        }
    }

    #[test]
    fn blocks_are_rewritten_and_the_rest_kept() {
        let doc = "# T\n<!-- generated: a.b -->\nold\n<!-- end generated -->\ntail\n";
        let sections = [section("a.b", DefaultValue::Literal("5".into()))];
        let update = update(doc, &sections).expect("valid");
        assert_eq!(
            update.text,
            "# T\n<!-- generated: a.b -->\n\n| key | default | meaning |\n|---|---|---|\n\
             | `k` | `5` | a \\| b |\n\n<!-- end generated -->\ntail\n"
        );
        assert_eq!(update.stale.len(), 1);
        assert!(update.stale[0].diff().contains("- old\n"));
        let again = super::update(&update.text, &sections).expect("valid");
        assert!(again.stale.is_empty());
        assert_eq!(again.text, update.text);
    }

    #[test]
    fn unknown_missing_and_unclosed_blocks_are_named() {
        let doc = "<!-- generated: a.x -->\n<!-- end generated -->\n<!-- generated: a.y -->\n";
        let problems = update(doc, &[section("a.b", DefaultValue::Required)]).unwrap_err();
        let all = problems.join("\n");
        assert!(all.contains("no config section `a.x`"), "{all}");
        assert!(all.contains("`a.y` is never closed"), "{all}");
        assert!(all.contains("section `a.b` has no block"), "{all}");
    }
}

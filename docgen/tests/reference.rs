//! The real repository: its reference must match its code.

use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_configuration_reference_matches_the_code() {
    let update = sluice_docgen::compare(&repo()).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        update.stale.is_empty(),
        "{}",
        update.report(sluice_docgen::DOC)
    );
}

#[test]
fn every_field_of_every_config_struct_is_documented() {
    for reference in sluice_docgen::REFERENCES {
        // The generator refuses undocumented fields, naming struct and field.
        let sections =
            sluice_docgen::sections(&repo(), reference).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            sections
                .iter()
                .all(|s| s.rows.iter().all(|r| !r.meaning.is_empty())),
            "{sections:?}"
        );
    }
}

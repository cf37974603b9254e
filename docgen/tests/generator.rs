//! The generator on small sources written for the purpose.

use std::path::PathBuf;

use sluice_docgen::{DefaultValue, Error, Problem, Reference, Section};

const REFERENCE: Reference = Reference {
    name: "app",
    root: "AppConfig",
    sources: &[],
};

const CONFIG: &str = r#"
    use std::time::Duration;

    /// The whole file.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct AppConfig {
        /// `[limits]`.
        #[serde(default)]
        pub limits: Limits,
        /// `[sink]`.
        #[serde(deserialize_with = "sluice_ops::config::tagged::one")]
        pub sink: SinkConfig,
        /// `[extra]`, optional.
        pub extra: Option<Extra>,
    }

    #[derive(Deserialize)]
    #[serde(default, rename_all = "kebab-case")]
    pub struct Limits {
        /// Rows.
        pub max_rows: usize,
        /// Age.
        #[serde(with = "humantime_serde")]
        pub max_age: Duration,
        /// Mode: `"block"` or `drop_oldest`.
        pub when_full: WhenFull,
        /// Computed.
        /// Default: a quarter of
        /// `max-rows`.
        pub segment: Option<u64>,
        #[serde(skip)]
        pub cache: Vec<u8>,
    }

    impl Default for Limits {
        fn default() -> Self {
            Self {
                max_rows: 65_536,
                max_age: Duration::from_millis(500),
                when_full: WhenFull::Block,
                segment: None,
                cache: Vec::new(),
            }
        }
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "snake_case")]
    pub enum WhenFull {
        #[default]
        Block,
        DropOldest,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum SinkConfig {
        Quic(QuicConfig),
        #[serde(rename = "kafka")]
        Broker(BrokerConfig),
    }

    #[derive(Deserialize)]
    pub struct QuicConfig {
        /// Where.
        pub endpoint: String,
        /// Wait.
        #[serde(default = "default_timeout", with = "humantime_serde")]
        pub timeout: Duration,
        /// Size.
        #[serde(default = "size")]
        pub size: ByteSize,
        /// Name.
        #[serde(default = "name")]
        pub name: String,
        /// Stalled.
        #[serde(default = "stalled", with = "humantime_serde")]
        pub stalled: Duration,
        /// Frame.
        #[serde(default = "frame")]
        pub frame: ByteSize,
    }

    const MAX_FRAME: usize = 16 << 20;
    fn frame() -> ByteSize {
        ByteSize::b(MAX_FRAME as u64)
    }

    fn default_timeout() -> Duration {
        Duration::from_secs(300)
    }
    fn size() -> ByteSize {
        ByteSize::mib(8)
    }
    fn name() -> String {
        "sluice.{stream}".into()
    }
    const STALLED: Duration = Duration::from_secs(30);
    fn stalled() -> Duration {
        STALLED
    }

    #[derive(Deserialize)]
    pub struct BrokerConfig {
        /// Brokers.
        pub brokers: String,
        /// Shared.
        #[serde(flatten)]
        pub common: Common,
    }

    #[derive(Deserialize)]
    pub struct Common {
        /// Window.
        #[serde(default = "window")]
        pub window: u32,
        /// Options.
        #[serde(default)]
        pub options: Options,
    }

    #[derive(Deserialize, Default)]
    #[serde(transparent)]
    pub struct Options(BTreeMap<String, String>);

    #[derive(Deserialize)]
    pub struct Extra {
        /// Flag.
        #[serde(default)]
        pub on: bool,
    }
"#;

const OTHER_FILE: &str = "
    fn window() -> u32 { 64 }
    fn window_elsewhere() -> u32 { 1 }
";

fn generate(config: &str) -> Result<Vec<Section>, Error> {
    sluice_docgen::sections_of(
        vec![
            (PathBuf::from("app/config.rs"), config.to_string()),
            (PathBuf::from("app/other.rs"), OTHER_FILE.to_string()),
        ],
        &REFERENCE,
    )
}

fn rows(sections: &[Section], id: &str) -> Vec<(String, DefaultValue, String)> {
    sections
        .iter()
        .find(|s| s.id == id)
        .unwrap_or_else(|| panic!("no section {id} in {sections:?}"))
        .rows
        .iter()
        .map(|r| (r.key.clone(), r.default.clone(), r.meaning.clone()))
        .collect()
}

fn lit(s: &str) -> DefaultValue {
    DefaultValue::Literal(s.into())
}

#[test]
fn sections_follow_the_types_and_serdes_attributes() {
    let sections = generate(CONFIG).unwrap_or_else(|e| panic!("{e}"));
    let ids: Vec<&str> = sections.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        ["app.limits", "app.sink.quic", "app.sink.kafka", "app.extra"]
    );
    assert_eq!(
        rows(&sections, "app.limits"),
        [
            ("max-rows".into(), lit("65536"), "Rows.".into()),
            ("max-age".into(), lit("\"500ms\""), "Age.".into()),
            (
                "when-full".into(),
                lit("\"block\""),
                "Mode: `\"block\"` or `drop_oldest`.".into()
            ),
            (
                "segment".into(),
                DefaultValue::Text("a quarter of `max-rows`".into()),
                "Computed.".into()
            ),
        ]
    );
    assert_eq!(
        rows(&sections, "app.sink.quic"),
        [
            ("endpoint".into(), DefaultValue::Required, "Where.".into()),
            ("timeout".into(), lit("\"5m\""), "Wait.".into()),
            ("size".into(), lit("\"8MiB\""), "Size.".into()),
            ("name".into(), lit("\"sluice.{stream}\""), "Name.".into()),
            ("stalled".into(), lit("\"30s\""), "Stalled.".into()),
            ("frame".into(), lit("\"16MiB\""), "Frame.".into()),
        ]
    );
    // Flattened keys join their parent; a function from another file is found by name.
    assert_eq!(
        rows(&sections, "app.sink.kafka"),
        [
            ("brokers".into(), DefaultValue::Required, "Brokers.".into()),
            ("window".into(), lit("64"), "Window.".into()),
            ("options".into(), lit("{}"), "Options.".into()),
        ]
    );
    assert_eq!(
        rows(&sections, "app.extra"),
        [("on".into(), lit("false"), "Flag.".into())]
    );
}

fn problems(config: &str) -> Vec<Problem> {
    match generate(config) {
        Err(Error::Code { problems, .. }) => problems,
        other => panic!("expected problems, got {other:?}"),
    }
}

#[test]
fn an_undocumented_field_is_refused_by_struct_and_field() {
    let config = CONFIG.replace("/// Brokers.\n", "");
    assert_eq!(
        problems(&config),
        [Problem::Undocumented {
            strukt: "BrokerConfig".into(),
            field: "brokers".into(),
            file: "app/config.rs".into(),
        }]
    );
}

#[test]
fn an_allowed_value_missing_from_the_doc_is_refused() {
    let config = CONFIG.replace("or `drop_oldest`", "or dropping");
    let found = problems(&config);
    assert!(
        matches!(&found[..], [Problem::ValueNotMentioned { field, value, .. }]
            if field == "when_full" && value == "drop_oldest"),
        "{found:?}"
    );
}

#[test]
fn a_default_line_cannot_contradict_a_default_in_the_code() {
    let config = CONFIG.replace("/// Where.", "/// Where.\n/// Default: here.");
    let config = config.replace("/// Rows.", "/// Rows.\n/// Default: many.");
    let found = problems(&config);
    assert!(
        matches!(&found[..], [
            Problem::Overridden { field: a, .. },
            Problem::Overridden { field: b, .. },
        ] if a == "max_rows" && b == "endpoint"),
        "{found:?}"
    );
}

#[test]
fn a_default_the_generator_cannot_render_needs_a_default_line() {
    let config = CONFIG.replace(
        "Duration::from_secs(300)",
        "let d = Duration::from_secs(300); d",
    );
    let found = problems(&config);
    assert!(
        matches!(&found[..], [Problem::Unrenderable { field, .. }] if field == "timeout"),
        "{found:?}"
    );
    let config = config.replace("/// Wait.", "/// Wait.\n/// Default: five minutes.");
    let sections = generate(&config).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        rows(&sections, "app.sink.quic")[1].1,
        DefaultValue::Text("five minutes".into())
    );
}

#[test]
fn a_name_defined_in_several_other_files_is_refused() {
    let sections = sluice_docgen::sections_of(
        vec![
            (PathBuf::from("a.rs"), CONFIG.to_string()),
            (PathBuf::from("b.rs"), OTHER_FILE.to_string()),
            (PathBuf::from("c.rs"), OTHER_FILE.to_string()),
        ],
        &REFERENCE,
    );
    let Err(Error::Code { problems, .. }) = sections else {
        panic!("expected an ambiguity, got {sections:?}");
    };
    assert!(
        matches!(&problems[..], [Problem::Ambiguous { name, .. }] if name == "window"),
        "{problems:?}"
    );
}

#[test]
fn an_enum_read_through_another_type_shows_no_variant_as_its_value() {
    // `try_from = "String"`: the file holds `"on_change"`, not the variant's name, and the
    // variants are not the values a doc comment must name.
    let config = CONFIG.replace(
        "        pub on: bool,\n    }",
        r#"        pub on: bool,
        /// When: `"on_change"` or an interval.
        #[serde(default)]
        pub when: Schedule,
    }

    #[derive(Deserialize, Default)]
    #[serde(try_from = "String")]
    pub enum Schedule {
        #[default]
        OnChange,
        Never,
    }"#,
    );
    let found = problems(&config);
    assert!(
        matches!(&found[..], [Problem::Unrenderable { field, code, .. }]
            if field == "when" && code.contains("String")),
        "{found:?}"
    );
    let config = config.replace(
        "or an interval.\n",
        "or an interval.\n        /// Default: `\"on_change\"`.\n",
    );
    let sections = generate(&config).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        rows(&sections, "app.extra")[1],
        (
            "when".into(),
            DefaultValue::Text("`\"on_change\"`".into()),
            "When: `\"on_change\"` or an interval.".into()
        )
    );
}

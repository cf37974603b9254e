//! The models as a graph: names checked, inputs derived from the SQL, and a run order in
//! which every model comes after the models it reads. A cycle is a config error.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, bail};
use datafusion::execution::SessionStateBuilder;
use datafusion::sql::parser::DFParser;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use sluice_ops::config::Invalid;

use super::config::{Mode, ModelConfig};

/// Namespace of the quarantine tables.
pub const QUARANTINE_NAMESPACE: &str = "quarantine";

/// One model, checked.
#[derive(Debug, Clone)]
pub struct Model {
    /// The target table, `namespace.table`.
    pub name: String,
    pub(super) namespace: String,
    pub(super) table: String,
    /// Tables read, `namespace.table`, sorted.
    pub inputs: Vec<String>,
    /// Where failing rows go: `quarantine.<namespace>_<table>`.
    pub quarantine: String,
    /// Its `[models.NAME]` section, as configured.
    pub cfg: ModelConfig,
}

/// Every model, in an order where each comes after the models it reads.
#[derive(Debug, Clone, Default)]
pub struct ModelGraph {
    /// The models in run order; empty when none is configured.
    pub order: Vec<Model>,
}

impl ModelGraph {
    /// Check `models` (keyed by target name); `bronze` is the lander's namespace, which no
    /// model may write, and bare table names in SQL refer to it. A refusal names the key.
    pub fn build(models: &BTreeMap<String, ModelConfig>, bronze: &str) -> Result<Self, Invalid> {
        let mut checked: BTreeMap<String, Model> = BTreeMap::new();
        for (name, cfg) in models {
            let model = check(name, cfg, bronze)
                .map_err(|e| Invalid::new(format!("models.{name:?}"), format!("{e:#}")))?;
            checked.insert(name.clone(), model);
        }
        for model in checked.values() {
            for input in &model.inputs {
                if let Some(up) = checked.get(input)
                    && model.cfg.mode == Mode::Incremental
                    && up.cfg.mode == Mode::Recompute
                {
                    return Err(Invalid::new(
                        format!("models.{:?}", model.name),
                        format!(
                            "an incremental model cannot read {input}, which is rebuilt on every \
                             run (mode = \"recompute\"); make {:?} recompute too",
                            model.name
                        ),
                    ));
                }
            }
        }
        let mut quarantines: BTreeMap<&str, &str> = BTreeMap::new();
        for m in checked.values() {
            if let Some(other) = quarantines.insert(&m.quarantine, &m.name) {
                return Err(Invalid::new(
                    "models",
                    format!(
                        "models.{:?} and models.{other:?} would share the quarantine table {}; rename one",
                        m.name, m.quarantine
                    ),
                ));
            }
        }
        let order = topological(&checked)?;
        Ok(Self {
            order: order
                .into_iter()
                .filter_map(|n| checked.remove(&n))
                .collect(),
        })
    }

    /// The model whose target is `name` (`namespace.table`), if there is one.
    pub fn get(&self, name: &str) -> Option<&Model> {
        self.order.iter().find(|m| m.name == name)
    }
}

fn check(name: &str, cfg: &ModelConfig, bronze: &str) -> anyhow::Result<Model> {
    let (namespace, table) = name
        .split_once('.')
        .filter(|(_, t)| !t.contains('.'))
        .with_context(|| format!("{name:?} must be namespace.table, e.g. silver.cpu"))?;
    sluice_protocol::validate_name("namespace", namespace)?;
    sluice_protocol::validate_name("table", table)?;
    if namespace == bronze {
        bail!(
            "namespace {namespace:?} is where the lander writes; models write elsewhere (silver, gold, ...)"
        );
    }
    if namespace == QUARANTINE_NAMESPACE {
        bail!("namespace {QUARANTINE_NAMESPACE:?} holds the quarantine tables; pick another");
    }
    let derived = tables_in(&cfg.sql, bronze).context("sql")?;
    let inputs: BTreeSet<String> = match &cfg.inputs {
        Some(list) => {
            let mut set = BTreeSet::new();
            for i in list {
                let q = qualify(i, bronze)
                    .with_context(|| format!("inputs: {i:?} must be namespace.table"))?;
                if !derived.contains(&q) {
                    bail!("inputs: {q} is listed but the SQL does not read it");
                }
                set.insert(q);
            }
            if let Some(missing) = derived.iter().find(|d| !set.contains(*d)) {
                bail!("inputs: the SQL reads {missing}, which is not listed");
            }
            set
        }
        None => derived,
    };
    if inputs.is_empty() {
        bail!("sql: reads no table");
    }
    if inputs.contains(name) {
        bail!("sql: a model cannot read its own table");
    }
    if let Some(q) = inputs
        .iter()
        .find(|i| i.starts_with(&format!("{QUARANTINE_NAMESPACE}.")))
        && cfg.mode == Mode::Incremental
    {
        bail!("sql: {q} is a quarantine table; only recompute models may read one");
    }
    for (rule, expr) in &cfg.expect {
        sluice_protocol::validate_name("expect", rule).with_context(|| format!("expect.{rule}"))?;
        if rule == "unique" {
            bail!("expect.unique: the name is taken by the `unique` key check");
        }
        Parser::new(&GenericDialect {})
            .try_with_sql(expr)
            .and_then(|mut p| p.parse_expr())
            .map_err(|e| anyhow::anyhow!("expect.{rule}: {expr:?} is not a SQL expression: {e}"))?;
    }
    if cfg.unique.iter().any(|c| c.trim().is_empty()) {
        bail!("unique: column names must not be empty");
    }
    if cfg.max_files_per_run == 0 {
        bail!("max_files_per_run: must be at least 1");
    }
    Ok(Model {
        name: name.to_string(),
        namespace: namespace.to_string(),
        table: table.to_string(),
        inputs: inputs.into_iter().collect(),
        quarantine: format!("{QUARANTINE_NAMESPACE}.{namespace}_{table}"),
        cfg: cfg.clone(),
    })
}

/// The tables (`namespace.table`) one SQL query reads; CTE names are not tables.
pub fn tables_in(sql: &str, bronze: &str) -> anyhow::Result<BTreeSet<String>> {
    let mut statements = DFParser::parse_sql(sql).map_err(|e| anyhow::anyhow!("{e}"))?;
    if statements.len() != 1 {
        bail!("must be exactly one statement, found {}", statements.len());
    }
    let statement = statements.pop_front().context("no statement")?;
    let state = SessionStateBuilder::new().build();
    let refs = state
        .resolve_table_references(&statement)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = BTreeSet::new();
    for r in refs {
        let name = match r.schema() {
            Some(schema) => format!("{schema}.{}", r.table()),
            None => format!("{bronze}.{}", r.table()),
        };
        out.insert(name);
    }
    Ok(out)
}

fn qualify(name: &str, bronze: &str) -> Option<String> {
    match name.split('.').collect::<Vec<_>>().as_slice() {
        [t] if !t.is_empty() => Some(format!("{bronze}.{t}")),
        [ns, t] if !ns.is_empty() && !t.is_empty() => Some(name.to_string()),
        _ => None,
    }
}

/// Kahn's algorithm over model → model edges (inputs that are not models are sources).
fn topological(models: &BTreeMap<String, Model>) -> Result<Vec<String>, Invalid> {
    // Reading a model's quarantine table depends on that model too.
    let by_quarantine: BTreeMap<&str, &str> = models
        .values()
        .map(|m| (m.quarantine.as_str(), m.name.as_str()))
        .collect();
    let deps = |m: &Model| -> Vec<String> {
        m.inputs
            .iter()
            .filter_map(|i| {
                if models.contains_key(i) {
                    Some(i.clone())
                } else {
                    by_quarantine.get(i.as_str()).map(|n| n.to_string())
                }
            })
            .collect()
    };
    let mut remaining: BTreeMap<&str, BTreeSet<String>> = models
        .values()
        .map(|m| (m.name.as_str(), deps(m).into_iter().collect()))
        .collect();
    let mut order = Vec::new();
    loop {
        let ready: Vec<String> = remaining
            .iter()
            .filter(|(_, d)| d.is_empty())
            .map(|(n, _)| n.to_string())
            .collect();
        if ready.is_empty() {
            break;
        }
        for n in &ready {
            remaining.remove(n.as_str());
            for d in remaining.values_mut() {
                d.remove(n);
            }
        }
        order.extend(ready);
    }
    if let Some((&start, _)) = remaining.iter().next() {
        // Walk dependencies inside the remainder until a name repeats: that is the cycle.
        let mut path = vec![start.to_string()];
        loop {
            let last = path.last().map(String::as_str).unwrap_or(start);
            let next = remaining
                .get(last)
                .and_then(|d| d.iter().next())
                .cloned()
                .unwrap_or_else(|| start.to_string());
            if let Some(pos) = path.iter().position(|p| *p == next) {
                let mut cycle: Vec<String> = path[pos..].to_vec();
                cycle.push(next);
                // Print it in data-flow order: input first.
                cycle.reverse();
                return Err(Invalid::new(
                    "models",
                    format!("models read each other in a cycle: {}", cycle.join(" -> ")),
                ));
            }
            path.push(next);
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models(list: &[(&str, &str, &str)]) -> BTreeMap<String, ModelConfig> {
        list.iter()
            .map(|(name, mode, sql)| {
                let cfg: ModelConfig =
                    toml::from_str(&format!("mode = {mode:?}\nsql = {sql:?}")).unwrap();
                (name.to_string(), cfg)
            })
            .collect()
    }

    #[test]
    fn orders_models_after_their_inputs() {
        let g = ModelGraph::build(
            &models(&[
                ("gold.daily", "recompute", "SELECT count(*) FROM silver.cpu"),
                (
                    "gold.joined",
                    "recompute",
                    "SELECT * FROM gold.daily, silver.cpu",
                ),
                (
                    "silver.cpu",
                    "incremental",
                    "WITH x AS (SELECT * FROM cpu) SELECT * FROM x JOIN bronze.hosts USING (host)",
                ),
            ]),
            "bronze",
        )
        .unwrap();
        let names: Vec<&str> = g.order.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["silver.cpu", "gold.daily", "gold.joined"]);
        assert_eq!(
            g.get("silver.cpu").unwrap().inputs,
            ["bronze.cpu", "bronze.hosts"]
        );
        assert_eq!(
            g.get("silver.cpu").unwrap().quarantine,
            "quarantine.silver_cpu"
        );
    }

    #[test]
    fn refuses_cycles_and_naming_mistakes() {
        let err = |list: &[(&str, &str, &str)]| {
            format!(
                "{:#}",
                ModelGraph::build(&models(list), "bronze").unwrap_err()
            )
        };
        let e = err(&[
            ("silver.a", "incremental", "SELECT * FROM silver.c"),
            ("silver.b", "incremental", "SELECT * FROM silver.a"),
            ("silver.c", "incremental", "SELECT * FROM silver.b"),
        ]);
        assert!(e.contains("cycle"), "{e}");
        for step in ["silver.a", "silver.b", "silver.c"] {
            assert!(e.contains(step), "{e}");
        }
        assert!(
            err(&[("silver.a", "incremental", "SELECT * FROM silver.a")]).contains("own table")
        );
        assert!(err(&[("bronze.x", "incremental", "SELECT * FROM cpu")]).contains("lander"));
        assert!(err(&[("nodot", "incremental", "SELECT * FROM cpu")]).contains("namespace.table"));
        assert!(err(&[("silver.x", "incremental", "SELECT 1")]).contains("reads no table"));
        assert!(err(&[("silver.x", "incremental", "SELEC * FROM cpu")]).contains("sql"));
        let e = err(&[
            ("gold.a", "recompute", "SELECT count(*) FROM cpu"),
            ("silver.b", "incremental", "SELECT * FROM gold.a"),
        ]);
        assert!(e.contains("recompute"), "{e}");
    }

    #[test]
    fn checks_listed_inputs_and_expectations() {
        let parse = |extra: &str| -> anyhow::Result<ModelGraph> {
            let cfg: ModelConfig =
                toml::from_str(&format!("sql = \"SELECT * FROM cpu\"\n{extra}")).unwrap();
            Ok(ModelGraph::build(
                &[("silver.cpu".to_string(), cfg)].into(),
                "bronze",
            )?)
        };
        assert!(parse("inputs = [\"cpu\"]").is_ok());
        let e = format!("{:#}", parse("inputs = [\"bronze.mem\"]").unwrap_err());
        assert!(e.contains("does not read"), "{e}");
        let e = format!(
            "{:#}",
            parse("expect = { range = \"cpu BETWEEN\" }").unwrap_err()
        );
        assert!(e.contains("expect.range"), "{e}");
        let e = format!("{:#}", parse("max_files_per_run = 0").unwrap_err());
        assert!(e.contains("max_files_per_run"), "{e}");
        let e = toml::from_str::<ModelConfig>("sql = \"x\"\nschedule = \"sometimes\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("on_change"), "{e}");
    }
}

//! The checked scenario: each stream's plan, compiled in an order where parents come first.

use std::sync::Arc;

use arrow_array::StringArray;
use arrow_schema::SchemaRef;
use indexmap::IndexMap;

use super::compile::compile_stream;
use super::entities::entity_values;
use crate::expr::Expr;
use crate::field::FieldSpec;
use crate::generator::EntityValues;
use crate::scenario::{AnomalySpec, ScenarioSpec};
use crate::schedule::{Delay, Late, Rate, mix};
use sluice_ops::config::Invalid;

/// The label column added to streams with anomalies.
pub const ANOMALY_COLUMN: &str = "_anomaly";

/// A checked scenario, ready to run any number of times.
#[derive(Debug)]
pub struct Scenario {
    /// Seed of every random draw (the file's `seed`, or the one given instead).
    pub seed: u64,
    /// Start of the simulated clock, µs since the Unix epoch; `None`: when the run starts.
    pub start_us: Option<i64>,
    /// End of the simulated clock (exclusive), µs since the Unix epoch; `None`: no end.
    pub end_us: Option<i64>,
    pub(super) entities: Vec<Arc<EntityValues>>,
    pub(super) streams: Vec<StreamPlan>,
}

#[derive(Debug)]
pub(super) struct StreamPlan {
    pub(super) name: String,
    pub(super) schema: SchemaRef,
    pub(super) entity: usize,
    pub(super) origin: Origin,
    pub(super) late: Option<Late>,
    pub(super) fields: Vec<(String, FieldSpec)>,
    /// Expressions in evaluation order: column index, expression, columns it reads.
    pub(super) exprs: Vec<(usize, Expr, Vec<usize>)>,
    /// Field anomalies: (index in `anomalies`, column index).
    pub(super) field_anomalies: Vec<(u16, usize)>,
    pub(super) anomalies: Vec<AnomalySpec>,
    pub(super) labels: Vec<String>,
    pub(super) children: Vec<usize>,
    /// Child streams: the parent's columns the events carry.
    pub(super) carried: Vec<String>,
}

#[derive(Debug)]
pub(super) enum Origin {
    /// Rate none: unpaced (inline simulator sources without a rate).
    Root(Option<Rate>),
    Child {
        parent: usize,
        probability: f64,
        min: u32,
        max: u32,
        delay: Delay,
    },
}

impl Scenario {
    /// Check a scenario. Root streams need a rate unless `allow_unpaced`.
    pub fn compile(spec: &ScenarioSpec, allow_unpaced: bool) -> Result<Self, Invalid> {
        if let (Some(s), Some(e)) = (spec.start, spec.end)
            && e <= s
        {
            return Err(Invalid::new("end", "must be after start"));
        }
        if spec.end.is_some() && spec.start.is_none() {
            return Err(Invalid::new(
                "end",
                "needs `start` (an end without a start would depend on when the run begins)",
            ));
        }
        let mut entities = Vec::new();
        let mut names = Vec::new();
        for (i, (name, e)) in spec.entities.iter().enumerate() {
            let key = format!("entities.{name}");
            sluice_protocol::validate_name("entity set", name)
                .map_err(|x| Invalid::new(&key, x.to_string()))?;
            entities.push(Arc::new(entity_values(
                name,
                e,
                mix(spec.seed, i as u64),
                &key,
            )?));
            names.push(name.clone());
        }
        // Streams without an entity set share one anonymous entity.
        let anonymous = entities.len();
        entities.push(Arc::new(EntityValues {
            count: 1,
            ids: Arc::new(StringArray::from(vec!["0"])),
            attributes: IndexMap::new(),
        }));
        if spec.streams.is_empty() {
            return Err(Invalid::new("streams", "at least one stream is required"));
        }
        let order = stream_order(spec)?;
        let mut plans: Vec<Option<StreamPlan>> = (0..spec.streams.len()).map(|_| None).collect();
        for i in order {
            let (name, s) = spec.streams.get_index(i).expect("index from the same map");
            let plan = compile_stream(
                spec,
                &names,
                &entities,
                anonymous,
                &plans,
                name,
                s,
                allow_unpaced,
            )?;
            plans[i] = Some(plan);
        }
        let mut streams: Vec<StreamPlan> = plans
            .into_iter()
            .map(|p| p.expect("every stream compiled"))
            .collect();
        for i in 0..streams.len() {
            if let Origin::Child { parent, .. } = streams[i].origin {
                streams[parent].children.push(i);
            }
        }
        Ok(Self {
            seed: spec.seed,
            start_us: spec.start.map(|t| t.timestamp_micros()),
            end_us: spec.end.map(|t| t.timestamp_micros()),
            entities,
            streams,
        })
    }

    /// The streams' names, in the scenario's order.
    pub fn stream_names(&self) -> impl Iterator<Item = &str> {
        self.streams.iter().map(|s| s.name.as_str())
    }

    /// The position of stream `name` in [`Self::stream_names`]; `None` when there is none.
    pub fn stream_index(&self, name: &str) -> Option<usize> {
        self.streams.iter().position(|s| s.name == name)
    }

    /// The Arrow schema of the stream at position `stream` (panics when out of range).
    pub fn schema(&self, stream: usize) -> SchemaRef {
        self.streams[stream].schema.clone()
    }
}

/// Streams in an order where parents come before their children; cycles are errors.
fn stream_order(spec: &ScenarioSpec) -> Result<Vec<usize>, Invalid> {
    let mut order = Vec::new();
    let mut state = vec![0u8; spec.streams.len()]; // 0 new, 1 visiting, 2 done
    fn visit(
        i: usize,
        spec: &ScenarioSpec,
        state: &mut [u8],
        order: &mut Vec<usize>,
    ) -> Result<(), Invalid> {
        match state[i] {
            2 => return Ok(()),
            1 => {
                let (name, _) = spec.streams.get_index(i).expect("index");
                return Err(Invalid::new(
                    format!("streams.{name}.parent"),
                    "streams follow each other in a cycle",
                ));
            }
            _ => {}
        }
        state[i] = 1;
        let (name, s) = spec.streams.get_index(i).expect("index");
        if let Some(p) = &s.parent {
            let j = spec.streams.get_index_of(&p.stream).ok_or_else(|| {
                Invalid::new(
                    format!("streams.{name}.parent.stream"),
                    format!("no stream named {:?}", p.stream),
                )
            })?;
            visit(j, spec, state, order)?;
        }
        state[i] = 2;
        order.push(i);
        Ok(())
    }
    for i in 0..spec.streams.len() {
        visit(i, spec, &mut state, &mut order)?;
    }
    Ok(order)
}

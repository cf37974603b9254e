//! What a Kafka batch must pass before its payload is read: a signature by the agent it
//! names, checked against the CA (see `signed.rs`), and that agent's permission for the
//! stream (see `access.rs`). Refusals are counted here, by reason.

use std::path::Path;
use std::sync::Arc;

use sluice_protocol::Envelope;
use sluice_protocol::kafka::Signature;

use crate::receive::access::{Access, Denied};
use crate::receive::signed::{Unverified, Verifier};
use crate::telemetry::metrics::Metrics;

/// Why a Kafka batch is not admitted. No retry helps: the message is what it is.
#[derive(Debug, thiserror::Error)]
pub enum NotAdmitted {
    /// Its signature does not prove the agent it names.
    #[error("refused: {0}")]
    Unverified(#[from] Unverified),
    /// That agent may not write the stream.
    #[error(transparent)]
    Denied(#[from] Denied),
}

impl NotAdmitted {
    /// Whether the same message may be admitted later: never (a fixed `[access]` needs a
    /// restart, and the message is read again only if it was never settled).
    pub fn retryable(&self) -> bool {
        false
    }

    /// The metric reason (`kafka_unverified_batches{reason}` or `lanes_refused{reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unverified(e) => e.reason(),
            Self::Denied(d) => d.reason(),
        }
    }
}

/// What a Kafka batch must pass before its payload is read: a signature by the agent it
/// names (unless unsigned batches are allowed), and that agent's permission for the stream.
pub struct Admission {
    pub(super) access: Arc<Access>,
    /// `None`: no CA to check against (only with `require_signed = false`).
    pub(super) verifier: Option<Verifier>,
    pub(super) require_signed: bool,
}

impl Admission {
    /// The checks `[kafka]` and `[access]` ask for.
    pub fn new(
        access: Arc<Access>,
        ca: Option<(&Path, Option<&Path>)>,
        require_signed: bool,
    ) -> anyhow::Result<Self> {
        if !require_signed {
            tracing::warn!(
                "kafka.require_signed = false: unsigned batches land as the agent their headers \
                 name, which any producer on the topics can forge"
            );
        }
        Ok(Self {
            access,
            verifier: ca.map(|(ca, crl)| Verifier::new(ca, crl)).transpose()?,
            require_signed,
        })
    }

    /// Ok when the batch may land; else why not, counted.
    pub fn admit(
        &self,
        envelope: &Envelope,
        signature: Option<&Signature>,
        payload: &[u8],
        metrics: &Metrics,
    ) -> Result<(), NotAdmitted> {
        let checked = match (&self.verifier, signature) {
            (_, None) if !self.require_signed => Ok(()),
            (Some(v), _) => v.verify(envelope, signature, payload),
            (None, Some(_)) => Ok(()),
            (None, None) => Err(Unverified::Unsigned),
        };
        if let Err(e) = checked {
            metrics.kafka_unverified(e.reason());
            return Err(e.into());
        }
        self.access
            .check(&envelope.agent, &envelope.stream)
            .map_err(|denied| {
                metrics.lane_refused(denied.reason());
                denied.into()
            })
    }
}

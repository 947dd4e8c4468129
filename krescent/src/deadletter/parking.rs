//! The parked set a running model consults: which streams are blocked from which position.

use std::collections::{BTreeMap, HashMap};

use super::{ErrorPolicy, ParkedEvent, Then};
use crate::Position;

/// What a running model knows of its parked events, and its policy.
#[derive(Debug, Clone, Default)]
pub(crate) struct Parking {
    pub(crate) policy: ErrorPolicy,
    /// Every parked event, by position.
    parked: BTreeMap<Position, ParkedEvent>,
    /// The first parked position of each stream (ordered parking only).
    first: HashMap<String, Position>,
}

impl Parking {
    /// The set as `policy` consults it, holding `parked` (loaded from the storage).
    pub(crate) fn new(policy: ErrorPolicy, parked: Vec<ParkedEvent>) -> Self {
        let mut parking = Parking {
            policy,
            ..Parking::default()
        };
        for event in parked {
            parking.insert(event);
        }
        parking
    }

    /// Whether parked events are kept in stream order.
    fn ordered(&self) -> bool {
        matches!(self.policy.then(), Then::Park { ordered: true })
    }

    /// Adds `event`.
    pub(crate) fn insert(&mut self, event: ParkedEvent) {
        if self.ordered() {
            let first = self
                .first
                .entry(event.stream_id.clone())
                .or_insert(event.position);
            *first = (*first).min(event.position);
        }
        self.parked.insert(event.position, event);
    }

    /// Removes the event at `position`.
    pub(crate) fn remove(&mut self, position: Position) {
        let Some(event) = self.parked.remove(&position) else {
            return;
        };
        if self.first.get(&event.stream_id) == Some(&position) {
            let next = self
                .parked
                .values()
                .find(|e| e.stream_id == event.stream_id)
                .map(|e| e.position);
            match next {
                Some(next) => self.first.insert(event.stream_id, next),
                None => self.first.remove(&event.stream_id),
            };
        }
    }

    /// Whether the event at `position` is parked already.
    pub(crate) fn holds(&self, position: Position) -> bool {
        self.parked.contains_key(&position)
    }

    /// The parked event of `stream` that an event at `position` must wait behind, if any.
    pub(crate) fn blocked_by(&self, stream: &str, position: Position) -> Option<Position> {
        self.first
            .get(stream)
            .copied()
            .filter(|first| *first < position)
    }

    /// Whether a failure stops the model at once and nothing is parked: the runner handles
    /// events as if there were no dead letters.
    pub(crate) fn is_plain(&self) -> bool {
        self.parked.is_empty() && self.policy == ErrorPolicy::STOP
    }

    /// Whether an operator asked for a parked event to be handled again.
    pub(crate) fn requested(&self) -> bool {
        self.parked.values().any(|e| e.retry)
    }

    /// How many events are parked.
    pub(crate) fn len(&self) -> usize {
        self.parked.len()
    }

    /// The parked events, in position order.
    pub(crate) fn events(&self) -> impl Iterator<Item = &ParkedEvent> {
        self.parked.values()
    }
}

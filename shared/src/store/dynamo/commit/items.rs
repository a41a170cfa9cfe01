//! The items a transaction writes beside its conditions: registry, head, event index and the
//! completion (the outbox) with its per-system references.

use chrono::{DateTime, Utc};

use super::super::item::{
    self, APPROVAL, BODY, EXPIRES_AT, GENERATION, Item, S3_KEY, SAMPLES, STATE, STATUS, TTL,
    VERSION, epoch_ceil, keys, n, s, ts,
};
use super::{EventBody, Owner, Staged, index_retention, with};
use crate::domain::{EvolutionEvent, SystemId};
use crate::store::rules::{COMPLETED, IdempotencyRecord};
use crate::store::{Completion, StoreResult, Write};

pub(in crate::store::dynamo) fn registry_item(
    system: &crate::store::SystemRecord,
) -> StoreResult<Item> {
    let mut item = item::record(keys::SYSTEMS, system.system_id.as_str(), system)?;
    item.insert("next_cycle_at".to_owned(), s(ts(system.next_cycle_at)));
    item.insert(VERSION.to_owned(), n(system.version));
    if let Some(deadline) = system.evaluation_deadline {
        item.insert("evaluation_deadline".to_owned(), s(ts(deadline)));
    }
    Ok(item)
}

pub(super) fn head_item(head: &crate::domain::Head) -> StoreResult<Item> {
    let mut item = with(
        item::record(keys::system(&head.system_id), keys::HEAD, head)?,
        [
            (GENERATION, n(head.generation)),
            (STATUS, s(head.status.as_str())),
        ],
    );
    // The held decision, for a verdict's condition.
    if let Some(approval) = &head.approval {
        item.insert(APPROVAL.to_owned(), s(&approval.decision_id));
    }
    // The reports counted, for the next report's condition.
    if let Some(evaluation) = &head.evaluation {
        item.insert(SAMPLES.to_owned(), n(evaluation.samples_seen));
    }
    Ok(item)
}

/// The index item of an event (carrying a copy of the body for the recent window) and its S3
/// body.
pub(in crate::store::dynamo) fn event_item(
    system: &SystemId,
    event: &EvolutionEvent,
) -> StoreResult<(Item, EventBody)> {
    let pk = keys::system(system);
    let sk = keys::event(event.timestamp, &event.id);
    let object = item::event_object(system, event.timestamp, &event.id);
    let json = item::encode(event)?;
    let expires = event
        .timestamp
        .checked_add_signed(index_retention())
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let mut index = item::key(&pk, &sk);
    index.insert(BODY.to_owned(), s(&json));
    index.insert(S3_KEY.to_owned(), s(&object));
    index.insert(GENERATION.to_owned(), n(event.generation));
    index.insert(TTL.to_owned(), n(epoch_ceil(expires)));
    let body = EventBody {
        object,
        json,
        index_pk: pk,
        at: event.timestamp,
    };
    Ok((index, body))
}

/// The completed idempotency record (the outbox) and, under each system it concerns, a
/// reference that lets `purge_system` find it without a scan.
pub(super) fn stage_completion(
    table: &str,
    staged: &mut Staged,
    completion: &Completion,
    writes: &[Write],
) -> StoreResult<()> {
    let record = IdempotencyRecord::completed(completion, writes);
    let pk = keys::idempotency(&completion.key);
    let ttl = n(epoch_ceil(completion.expires_at));
    let item = with(
        item::record(&pk, keys::RECORD, &record)?,
        [
            (STATE, s(COMPLETED)),
            (EXPIRES_AT, s(ts(completion.expires_at))),
            (TTL, ttl.clone()),
        ],
    );
    let owner = Owner::unconditioned("completion", format!("{pk}/{}", keys::RECORD));
    staged.push(table, owner, item, None)?;
    if let IdempotencyRecord::Completed { systems, .. } = &record {
        for system in systems {
            let system_pk = keys::system(system);
            let item = with(item::key(&system_pk, &pk), [(TTL, ttl.clone())]);
            let owner = Owner::unconditioned("completion", format!("{system_pk}/{pk}"));
            staged.push(table, owner, item, None)?;
        }
    }
    Ok(())
}

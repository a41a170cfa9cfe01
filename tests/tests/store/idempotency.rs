//! Idempotency claims and the outbox stored with a commit.

use shared::domain::HeadStatus;
use shared::store::{Claim, Transaction};

use crate::fixtures::{advance, completion, create_system, outgoing, sys, t};
use crate::harness::Harness;

const KEY: &str = "msg-1";

/// Commits a system creation with a completed record for `KEY` that expires at `t(expires)`.
async fn complete(h: &Harness, hash: &str, expires: i64) -> Vec<shared::domain::Outgoing> {
    let id = sys("alpha");
    let messages = vec![outgoing(&id, 0), outgoing(&id, 1)];
    h.store
        .commit(Transaction {
            writes: vec![create_system(&id)],
            completion: Some(completion(KEY, hash, messages.clone(), t(expires))),
        })
        .await
        .expect("commit with completion");
    messages
}

pub async fn first_claim_is_ours_and_a_second_sees_it_in_progress(h: &Harness) {
    let store = &h.store;
    assert_eq!(
        store.claim(KEY, "hash", t(0), t(60)).await.expect("claim"),
        Claim::Claimed
    );
    assert_eq!(
        store.claim(KEY, "hash", t(1), t(61)).await.expect("claim"),
        Claim::InProgress { until: t(60) }
    );
    // An in-progress claim answers the same whatever the payload.
    assert_eq!(
        store.claim(KEY, "other", t(2), t(62)).await.expect("claim"),
        Claim::InProgress { until: t(60) }
    );
    assert_eq!(
        store
            .claim("msg-2", "hash", t(2), t(62))
            .await
            .expect("claim"),
        Claim::Claimed,
        "keys are independent"
    );
}

pub async fn completed_key_returns_the_stored_outgoing_messages(h: &Harness) {
    assert_eq!(
        h.store
            .claim(KEY, "hash", t(0), t(60))
            .await
            .expect("claim"),
        Claim::Claimed
    );
    let messages = complete(h, "hash", 3_600).await;
    assert_eq!(
        h.store
            .claim(KEY, "hash", t(10), t(70))
            .await
            .expect("claim"),
        Claim::Completed { outgoing: messages }
    );
}

pub async fn completed_key_with_another_payload_is_a_mismatch(h: &Harness) {
    complete(h, "hash", 3_600).await;
    assert_eq!(
        h.store
            .claim(KEY, "other", t(10), t(70))
            .await
            .expect("claim"),
        Claim::PayloadMismatch
    );
}

pub async fn expired_completion_can_be_claimed_again(h: &Harness) {
    complete(h, "hash", 3_600).await;
    assert!(matches!(
        h.store
            .claim(KEY, "hash", t(3_599), t(3_659))
            .await
            .expect("claim"),
        Claim::Completed { .. }
    ));
    assert_eq!(
        h.store
            .claim(KEY, "other", t(3_600), t(3_660))
            .await
            .expect("claim"),
        Claim::Claimed,
        "a record expiring now counts as gone, whatever it held"
    );
    assert_eq!(
        h.store
            .claim(KEY, "other", t(3_601), t(3_661))
            .await
            .expect("claim"),
        Claim::InProgress { until: t(3_660) }
    );
}

pub async fn expired_in_progress_claim_can_be_taken_over(h: &Harness) {
    let store = &h.store;
    assert_eq!(
        store.claim(KEY, "hash", t(0), t(60)).await.expect("claim"),
        Claim::Claimed
    );
    assert_eq!(
        store
            .claim(KEY, "hash", t(60), t(120))
            .await
            .expect("claim"),
        Claim::Claimed
    );
    assert_eq!(
        store
            .claim(KEY, "hash", t(61), t(121))
            .await
            .expect("claim"),
        Claim::InProgress { until: t(120) }
    );
}

pub async fn released_claim_can_be_claimed_at_once(h: &Harness) {
    let store = &h.store;
    assert_eq!(
        store.claim(KEY, "hash", t(0), t(60)).await.expect("claim"),
        Claim::Claimed
    );
    store.release(KEY).await.expect("release");
    assert_eq!(
        store.claim(KEY, "hash", t(1), t(61)).await.expect("claim"),
        Claim::Claimed
    );
    store
        .release("never-claimed")
        .await
        .expect("release of nothing");
}

pub async fn release_keeps_a_completed_record(h: &Harness) {
    let messages = complete(h, "hash", 3_600).await;
    h.store.release(KEY).await.expect("release");
    assert_eq!(
        h.store
            .claim(KEY, "hash", t(10), t(70))
            .await
            .expect("claim"),
        Claim::Completed { outgoing: messages }
    );
}

pub async fn refused_commit_leaves_the_claim_in_progress(h: &Harness) {
    let id = sys("alpha");
    assert_eq!(
        h.store
            .claim(KEY, "hash", t(0), t(60))
            .await
            .expect("claim"),
        Claim::Claimed
    );
    let refused = Transaction {
        // The system does not exist, so its head cannot move.
        writes: advance(&id, 0, HeadStatus::Evaluating),
        completion: Some(completion(KEY, "hash", vec![outgoing(&id, 1)], t(3_600))),
    };
    assert!(h.store.commit(refused).await.is_err());
    assert_eq!(
        h.store
            .claim(KEY, "hash", t(1), t(61))
            .await
            .expect("claim"),
        Claim::InProgress { until: t(60) }
    );
}

pub async fn sent_outbox_is_not_returned_again(h: &Harness) {
    let messages = complete(h, "hash", 3_600).await;
    h.store
        .mark_sent("no-such-key", t(3_600))
        .await
        .expect("unknown keys are ignored");
    assert_eq!(
        h.store
            .claim(KEY, "hash", t(10), t(70))
            .await
            .expect("claim"),
        Claim::Completed { outgoing: messages }
    );
    h.store.mark_sent(KEY, t(3_600)).await.expect("mark sent");
    assert_eq!(
        h.store
            .claim(KEY, "hash", t(11), t(71))
            .await
            .expect("claim"),
        Claim::Completed { outgoing: vec![] },
        "a duplicate of a sent message re-sends nothing"
    );
    assert_eq!(
        h.store
            .claim(KEY, "other", t(12), t(72))
            .await
            .expect("claim"),
        Claim::PayloadMismatch
    );
}

/// An unsent outbox is kept for as long as it was committed with (past a dead-letter queue's
/// retention); once sent, `mark_sent` shortens it to the dedup window it is given.
pub async fn a_sent_outbox_is_kept_only_for_the_window_mark_sent_gives(h: &Harness) {
    complete(h, "hash", 1_296_000).await;
    assert!(matches!(
        h.store
            .claim(KEY, "hash", t(259_200), t(259_260))
            .await
            .expect("claim"),
        Claim::Completed { ref outgoing } if outgoing.len() == 2
    ));
    h.store
        .mark_sent(KEY, t(259_200 + 86_400))
        .await
        .expect("mark sent");
    assert_eq!(
        h.store
            .claim(KEY, "hash", t(259_300), t(259_360))
            .await
            .expect("claim"),
        Claim::Completed { outgoing: vec![] }
    );
    assert_eq!(
        h.store
            .claim(KEY, "hash", t(259_200 + 86_401), t(259_200 + 86_461))
            .await
            .expect("claim"),
        Claim::Claimed,
        "past the dedup window the key is free again"
    );
}

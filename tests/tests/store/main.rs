//! Conformance suite of the store adapters: every case runs against the in-memory store, a
//! SQLite file and DynamoDB with S3 (on moto's server), so all keep the DynamoDB semantics the
//! pipeline relies on.

mod control;
mod dynamo_s3;
mod evolution;
mod failover;
mod fixtures;
mod harness;
mod idempotency;
mod ledger;
mod sqlite_file;

/// One test per adapter for a case `module::name(&Harness)`; `[multi_thread]` runs it on a
/// multi-threaded runtime so its tasks really race.
macro_rules! case {
    ($adapter:ident, $module:ident :: $name:ident) => {
        #[tokio::test]
        async fn $name() {
            crate::$module::$name(&crate::harness::Harness::$adapter().await).await;
        }
    };
    ($adapter:ident, [multi_thread] $module:ident :: $name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            crate::$module::$name(&crate::harness::Harness::$adapter().await).await;
        }
    };
}

macro_rules! conformance {
    ($( $([$flavor:ident])? $module:ident :: $name:ident ),* $(,)?) => {
        mod memory {
            $( case!(memory, $([$flavor])? $module::$name); )*
        }
        mod sqlite {
            $( case!(sqlite, $([$flavor])? $module::$name); )*
        }
        mod dynamo {
            $( case!(dynamo, $([$flavor])? $module::$name); )*
        }
    };
}

conformance! {
    evolution::creating_a_system_stores_registry_head_and_first_generation,
    evolution::creating_an_existing_system_fails_its_condition,
    evolution::systems_list_in_id_order,
    evolution::put_system_updates_an_existing_system_and_refuses_an_unknown_one,
    evolution::a_registry_write_from_a_stale_read_fails_its_condition,
    evolution::the_registry_pages_in_id_order,
    evolution::a_verdict_resolves_only_the_decision_the_head_holds,
    evolution::a_report_counts_only_at_the_count_it_read,
    evolution::second_writer_on_same_head_gets_condition_failed,
    evolution::head_moves_only_from_the_expected_status,
    evolution::head_of_an_unknown_system_fails_its_condition,
    evolution::a_head_awaiting_approval_round_trips_and_moves_only_from_that_status,
    [multi_thread] evolution::concurrent_writers_on_one_head_commit_exactly_once,
    evolution::failed_last_condition_leaves_no_earlier_write_and_no_completion,
    evolution::transaction_touching_one_item_twice_is_invalid,
    evolution::records_without_a_system_are_invalid,
    evolution::generations_are_immutable,
    evolution::decisions_are_written_once,
    evolution::plans_are_written_once,
    evolution::cursor_writes_follow_their_expected_version,
    evolution::upserts_rewrite_the_same_record,
    evolution::generations_list_in_ascending_order_after_the_given_one,
    evolution::events_list_in_time_order_with_inclusive_since_and_limit,
    evolution::events_are_queried_by_id_type_and_time_range_with_their_storage_metadata,
    evolution::decisions_list_in_time_order_with_inclusive_since_and_limit,
    evolution::history_lists_the_latest_entries_in_ascending_generation_order,
    evolution::fitness_lists_the_samples_of_one_generation,
    evolution::llm_calls_list_by_time_for_one_or_all_systems,
    evolution::alerts_list_in_time_order_with_inclusive_since_and_limit,
    evolution::purging_a_system_forgets_its_records_but_keeps_the_spend,
    idempotency::first_claim_is_ours_and_a_second_sees_it_in_progress,
    idempotency::completed_key_returns_the_stored_outgoing_messages,
    idempotency::sent_outbox_is_not_returned_again,
    idempotency::a_sent_outbox_is_kept_only_for_the_window_mark_sent_gives,
    idempotency::completed_key_with_another_payload_is_a_mismatch,
    idempotency::expired_completion_can_be_claimed_again,
    idempotency::expired_in_progress_claim_can_be_taken_over,
    idempotency::released_claim_can_be_claimed_at_once,
    idempotency::release_keeps_a_completed_record,
    idempotency::refused_commit_leaves_the_claim_in_progress,
    ledger::reservation_over_a_limit_is_refused_and_changes_nothing,
    ledger::reservation_up_to_the_limit_exactly_fits,
    ledger::the_first_exceeded_limit_is_reported,
    ledger::system_limits_count_only_that_system,
    ledger::settlement_moves_reserved_to_spent_exactly,
    ledger::repeated_settlement_is_counted_once,
    ledger::spending_counts_against_later_reservations,
    ledger::totals_are_kept_per_scope_and_period,
    ledger::settlement_releases_the_counters_of_the_reservation_time,
    ledger::ledger_entries_list_in_time_order_since,
    ledger::a_reservation_is_held_until_it_is_settled,
    ledger::an_expired_hold_is_reclaimed_once_and_recorded,
    ledger::a_settlement_after_its_hold_was_reclaimed_counts_the_cost_once,
    ledger::a_settled_call_has_nothing_to_reclaim,
    [multi_thread] ledger::concurrent_reservations_never_overshoot_the_limit,
    [multi_thread] control::concurrent_counter_updates_are_all_counted,
    control::budget_state_starts_normal,
    control::budget_mode_changes_only_from_the_expected_mode,
    control::circuits_are_kept_per_model,
    control::performance_starts_empty_and_is_replaced_whole,
    control::cached_answers_are_kept_per_key_and_expire_by_the_callers_clock,
}

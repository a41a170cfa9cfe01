//! Small, valid records for the store cases. Times are seconds after a fixed instant so tests
//! can order and filter them exactly.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use shared::domain::{
    Alert, AlertLevel, AnalysisRecord, Body, CostAnalysis, DecidedBy, DecisionRecord, Envelope,
    EvaluationOutcome, EventType, EvolutionAnalysis, EvolutionEvent, FitnessSample, GeneSchema,
    Generation, Genes, Head, HeadStatus, HistoryEntry, Origin, Outgoing, Plan, PlanCursor,
    Recommendation, RiskAssessment, Role, SystemId,
};
use shared::store::{
    Completion, LlmCallRecord, StoreError, StoreResult, SystemRecord, SystemSettings, Transaction,
    Usage, Write,
};

/// 2026-11-27T12:00:00Z plus `secs` seconds.
pub fn t(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0)
        .single()
        .expect("valid instant")
        + Duration::seconds(secs)
}

pub fn sys(name: &str) -> SystemId {
    SystemId::parse(name).expect("valid system id")
}

pub fn system_record(id: &SystemId) -> SystemRecord {
    SystemRecord {
        system_id: id.clone(),
        schema: GeneSchema::new(),
        settings: SystemSettings::default(),
        created_at: t(0),
        next_cycle_at: t(900),
        evaluation_deadline: None,
        cost_mode: shared::domain::BudgetMode::Economy,
        approval_expires_at: None,
        budget_alerts: Vec::new(),
        version: 0,
    }
}

pub fn generation(id: &SystemId, n: u64) -> Generation {
    let origin = if n == 0 {
        Origin::Initial
    } else {
        Origin::Rollback {
            restored: n - 1,
            rolled_back: n,
            reason: format!("fixture {n}"),
        }
    };
    Generation::new(
        id.clone(),
        n,
        n.checked_sub(1),
        Genes::new(),
        origin,
        t(n as i64),
    )
}

pub fn head(id: &SystemId, n: u64, status: HeadStatus) -> Head {
    Head {
        system_id: id.clone(),
        generation: n,
        status,
        stable_generation: 0,
        stable_fitness: None,
        evaluation: None,
        rollback_streak: 0,
        updated_at: t(n as i64),
        approval: None,
    }
}

pub fn create_system(id: &SystemId) -> Write {
    Write::CreateSystem {
        system: system_record(id),
        head: head(id, 0, HeadStatus::Stable),
        generation: generation(id, 0),
    }
}

/// The writes of applying a mutation: the new generation and the head moved onto it.
pub fn advance(id: &SystemId, from: u64, status: HeadStatus) -> Vec<Write> {
    vec![
        Write::PutGeneration {
            generation: generation(id, from + 1),
        },
        Write::UpdateHead {
            expected_generation: from,
            expected_status: HeadStatus::Stable,
            head: head(id, from + 1, status),
        },
    ]
}

pub fn event(id: &SystemId, event_id: &str, secs: i64) -> EvolutionEvent {
    EvolutionEvent {
        trace_id: None,
        message_id: None,
        id: event_id.to_owned(),
        timestamp: t(secs),
        event_type: EventType::MutationApplied,
        generation: 1,
        fitness_delta: None,
        mutation_id: None,
        bedrock_analysis: None,
        system_context: None,
        storage_metadata: None,
        system_id: Some(id.clone()),
        detail: None,
    }
}

pub fn decision(id: &SystemId, decision_id: &str, secs: i64) -> DecisionRecord {
    DecisionRecord {
        trace_id: None,
        message_id: None,
        decision_id: decision_id.to_owned(),
        timestamp: t(secs),
        mutation_id: format!("mut-{decision_id}"),
        model_used: "local".to_owned(),
        decision: Recommendation::Approve,
        confidence: 0.8,
        risk_assessment: RiskAssessment {
            overall_risk: 0.2,
            technical_risk: 0.2,
            business_risk: 0.1,
            operational_risk: 0.1,
        },
        reasoning: "low risk".to_owned(),
        mitigation_strategies: Vec::new(),
        estimated_outcomes: BTreeMap::new(),
        cost_analysis: CostAnalysis {
            tokens_used: 0,
            cost_usd: 0.0,
            processing_time_ms: 1,
            cost_nano_usd: Some(0),
        },
        system_id: Some(id.clone()),
        base_generation: Some(0),
        mutation: None,
        decided_by: Some(DecidedBy::Policy),
        local_risk: Some(0.2),
        approver: None,
        resolves: None,
        cache_hit: false,
    }
}

pub fn plan(id: &SystemId, plan_id: &str) -> Plan {
    Plan {
        plan_id: plan_id.to_owned(),
        system_id: id.clone(),
        analysis_id: "ana-1".to_owned(),
        base_generation: 0,
        steps: Vec::new(),
        dropped: Vec::new(),
        truncated: false,
        success_criteria: BTreeMap::new(),
        model_used: "local".to_owned(),
        created_at: t(0),
        cache_hit: false,
    }
}

pub fn cursor(id: &SystemId, version: u64) -> PlanCursor {
    PlanCursor {
        version,
        ..PlanCursor::new(id.clone(), 0)
    }
}

pub fn analysis(id: &SystemId, analysis_id: &str, assessment: &str) -> AnalysisRecord {
    AnalysisRecord {
        analysis_id: analysis_id.to_owned(),
        system_id: id.clone(),
        generation: 0,
        analysis: EvolutionAnalysis {
            current_state_assessment: assessment.to_owned(),
            strengths: Vec::new(),
            weaknesses: Vec::new(),
            opportunities: Vec::new(),
            threats: Vec::new(),
            recommended_focus_areas: Vec::new(),
            confidence_score: 0.5,
            reasoning: "fixture".to_owned(),
        },
        model_used: "local".to_owned(),
        created_at: t(0),
        cache_hit: false,
    }
}

pub fn fitness(id: &SystemId, n: u64, sample_id: &str, secs: i64, score: f64) -> FitnessSample {
    FitnessSample {
        id: sample_id.to_owned(),
        system_id: id.clone(),
        generation: n,
        checksum: "sum".to_owned(),
        score: Some(score),
        metrics: BTreeMap::new(),
        error: None,
        cohort: None,
        received_at: t(secs),
    }
}

pub fn history(n: u64, fitness: f64) -> HistoryEntry {
    HistoryEntry {
        generation: n,
        fitness: Some(fitness),
        outcome: EvaluationOutcome::Keep,
        baseline_fitness: None,
        changes: Vec::new(),
        predicted_impact: 0.0,
        plan_step: None,
        reports: 1,
        failed: 0,
        metrics: std::collections::BTreeMap::new(),
        breaches: Vec::new(),
        significance: None,
        canary: None,
        closed_at: t(n as i64),
    }
}

pub fn llm_call(id: &SystemId, call_id: &str, secs: i64) -> LlmCallRecord {
    LlmCallRecord {
        trace_id: None,
        call_id: call_id.to_owned(),
        system_id: id.clone(),
        envelope_id: "msg-1".to_owned(),
        role: Role::Decide,
        model_id: "model-a".to_owned(),
        usage: Usage {
            input_tokens: 100,
            output_tokens: 20,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
        },
        cost_nano_usd: 1_234,
        latency_ms: 10,
        bedrock_requests: 1,
        fallback: None,
        at: t(secs),
        cache_hit: false,
    }
}

pub fn alert(alert_id: &str, secs: i64) -> Alert {
    Alert {
        id: alert_id.to_owned(),
        level: AlertLevel::Warning,
        kind: "fixture".to_owned(),
        message: format!("alert {alert_id}"),
        system_id: None,
        at: t(secs),
    }
}

/// A message a stage would send after its commit.
pub fn outgoing(id: &SystemId, n: u64) -> Outgoing {
    Outgoing::new(Envelope::caused_by(
        "cause-1",
        None,
        "snapshot",
        0,
        id.clone(),
        n,
        t(0),
        Body::EvaluationDue { generation: n },
    ))
}

pub fn completion(
    key: &str,
    hash: &str,
    outgoing: Vec<Outgoing>,
    expires_at: DateTime<Utc>,
) -> Completion {
    Completion {
        key: key.to_owned(),
        payload_hash: hash.to_owned(),
        outgoing,
        completed_at: t(0),
        expires_at,
    }
}

pub fn tx(writes: Vec<Write>) -> Transaction {
    Transaction {
        writes,
        completion: None,
    }
}

/// Asserts a refused condition whose message names `mentions` (the write or key that failed).
pub fn assert_condition_failed(result: StoreResult<()>, mentions: &str) {
    match result {
        Err(StoreError::ConditionFailed(message)) => assert!(
            message.contains(mentions),
            "condition failure should mention {mentions:?}: {message}"
        ),
        other => panic!("expected ConditionFailed mentioning {mentions:?}, got {other:?}"),
    }
}

pub fn assert_invalid(result: StoreResult<()>) {
    match result {
        Err(StoreError::Invalid(_)) => {}
        other => panic!("expected Invalid, got {other:?}"),
    }
}
